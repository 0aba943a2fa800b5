//! `hydrant security-groups [--config FILE] [--json]`: the egress policy an executor's
//! containers get, in evaluation order (host and neighbour denies, the operator's rules, the
//! default denies, public egress), as a table or as JSON.
//!
//! It reads the executor's TOML config (the file `hydrant run executor --config` takes), or the
//! built-in defaults without one, through the same `NetConfig` the executor hands to the
//! container network: what it prints is what the executor loads into nftables. Invariant: a
//! config the executor would refuse is refused here with the same message.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use hydrant_runtime::Validate as _;

/// `hydrant security-groups`.
#[derive(Debug, clap::Args)]
pub struct SecurityGroupsArgs {
    /// An executor's TOML config file; without it, the built-in defaults.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// One JSON array of rules (Cloud Foundry ASG fields plus `action`) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Prints the effective rules.
pub fn run(args: &SecurityGroupsArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let config: hydrant_executor::Config =
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            config
                .validate()
                .with_context(|| format!("checking {}", path.display()))?;
            config
        }
        None => hydrant_executor::Config::default(),
    };
    let network = &config.network_config();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&network.effective_rules())?
        );
    } else {
        println!("bridge {} subnet {}", network.bridge, network.subnet);
        print!("{}", network.effective_rules_table());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_rules_from_the_executor_config_come_before_the_default_denies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("executor.toml");
        std::fs::write(
            &path,
            "[network]\nbridge = \"hyd1\"\n[[network.rules]]\nprotocol = \"tcp\"\n\
             destination = \"10.0.11.0/24\"\nports = \"5432\"\ndescription = \"db\"\n",
        )
        .unwrap();
        let config: hydrant_executor::Config =
            toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let rules = config.network.effective_rules();
        let db = rules.iter().position(|r| r.description == "db").unwrap();
        let link_local = rules
            .iter()
            .position(|r| r.destination == "169.254.0.0/16")
            .unwrap();
        assert!(db < link_local);
        let args = SecurityGroupsArgs {
            config: Some(path),
            json: false,
        };
        assert_eq!(run(&args).unwrap(), ExitCode::SUCCESS);
        let bad = dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            "[[network.rules]]\nprotocol = \"tcp\"\ndestination = \"10.0.0.1/8\"\n",
        )
        .unwrap();
        let err = run(&SecurityGroupsArgs {
            config: Some(bad),
            json: true,
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("did you mean 10.0.0.0/8"),
            "{err:#}"
        );
    }
}
