pub async fn run(_a: LogsArgs) -> anyhow::Result<std::process::ExitCode> { Ok(std::process::ExitCode::SUCCESS) }
#[derive(Debug, clap::Args)] pub struct LogsArgs { source: String }
