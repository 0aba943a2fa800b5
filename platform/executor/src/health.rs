//! Health probes: how the executor decides an instance is up (`port`, `http`, `process`), with
//! Diego's wording for failures so users read the same messages Cloud Foundry would show.
//!
//! Invariant: a probe always finishes within its timeout and answers with text that is safe to
//! log (it never echoes the app's response body).

use std::time::Duration;

use hydrant_bus::messages::HealthCheckType;

/// One health probe of an instance listening on `port`.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    pub(crate) kind: HealthCheckType,
    /// Where the instance listens: loopback, or its container's address.
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) endpoint: String,
    pub(crate) timeout: Duration,
    pub(crate) client: reqwest::Client,
}

impl Probe {
    /// Runs the probe once.
    pub(crate) async fn run(self) -> Result<(), String> {
        match self.kind {
            HealthCheckType::Process => Ok(()),
            HealthCheckType::Port => {
                let connect = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
                match tokio::time::timeout(self.timeout, connect).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!(
                        "Failed to make TCP connection to port {}: {e}",
                        self.port
                    )),
                    Err(_) => Err(format!(
                        "Failed to make TCP connection to port {}: timed out after {}",
                        self.port,
                        go_duration(self.timeout)
                    )),
                }
            }
            HealthCheckType::Http => {
                let url = format!("http://{}:{}{}", self.host, self.port, self.endpoint);
                let sent = self.client.get(&url).timeout(self.timeout).send().await;
                match sent {
                    Ok(response) if response.status() == reqwest::StatusCode::OK => Ok(()),
                    Ok(response) => Err(format!(
                        "Failed to make HTTP request to '{}' on port {}: received status code {}",
                        self.endpoint,
                        self.port,
                        response.status().as_u16()
                    )),
                    Err(e) => Err(format!(
                        "Failed to make HTTP request to '{}' on port {}: {}",
                        self.endpoint,
                        self.port,
                        if e.is_timeout() {
                            format!("timed out after {}", go_duration(self.timeout))
                        } else {
                            e.without_url().to_string()
                        }
                    )),
                }
            }
        }
    }
}

/// `path` as an HTTP health-check endpoint: starts with `/`, defaults to `/`, and holds no
/// characters that could turn it into another URL.
pub(crate) fn endpoint(path: Option<&str>) -> String {
    let path = path.unwrap_or("/");
    let clean: String = path
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '#' && *c != '\\')
        .take(512)
        .collect();
    if clean.starts_with('/') {
        clean
    } else {
        format!("/{clean}")
    }
}

/// A duration the way Go prints it (`1m0s`, `5s`, `500ms`), as Cloud Foundry's messages do.
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let frac = d.subsec_millis();
    let s = if frac == 0 {
        format!("{}s", secs % 60)
    } else {
        let digits = format!("{frac:03}");
        format!("{}.{}s", secs % 60, digits.trim_end_matches('0'))
    };
    match secs / 60 {
        0 => s,
        m if m < 60 => format!("{m}m{s}"),
        m => format!("{}h{}m{s}", m / 60, m % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_go() {
        assert_eq!(go_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(go_duration(Duration::from_secs(5)), "5s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(go_duration(Duration::from_secs(3725)), "1h2m5s");
    }

    #[test]
    fn endpoints_stay_paths() {
        assert_eq!(endpoint(None), "/");
        assert_eq!(endpoint(Some("health")), "/health");
        assert_eq!(endpoint(Some("/a b#c")), "/abc");
    }

    #[tokio::test]
    async fn port_probe_sees_a_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let probe = Probe {
            kind: HealthCheckType::Port,
            host: "127.0.0.1".into(),
            port,
            endpoint: "/".into(),
            timeout: Duration::from_secs(1),
            client: reqwest::Client::new(),
        };
        probe.clone().run().await.unwrap();
        drop(listener);
        let err = probe.run().await.unwrap_err();
        assert!(err.contains("Failed to make TCP connection"), "{err}");
    }
}
