//! [`WindowsConfig`]: how much history the windows keep and how many things they track.
//!
//! Every bound on memory is a field here, so an operator can read the worst case off the config:
//! apps × (instances × short horizon + latency histograms + minute history). Unknown fields are
//! rejected and [`WindowsConfig::validate`] names the field and the fix, like every role config.

use serde::{Deserialize, Serialize};

use crate::Error;

/// Bounds of the rolling windows. Embedded in the configs of the roles that use them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowsConfig {
    /// Seconds of per-second history (request counts, status classes, log lines, gauges): the
    /// longest window a query can ask for. Longer windows are answered over this horizon.
    /// Default 300 (5 minutes).
    pub horizon_secs: u32,
    /// Latency quantiles over windows up to this many seconds merge one histogram per second.
    /// Default 10.
    pub latency_fine_secs: u32,
    /// Beyond `latency_fine_secs`, latency is kept in one histogram per block of this many
    /// seconds, so a window's start is rounded to a block. Default 10.
    pub latency_block_secs: u32,
    /// Largest latency recorded exactly, in seconds; longer requests count as this. Default 600.
    pub latency_max_secs: u32,
    /// Minutes of per-minute SLO counts kept per app. Default 4320 (3 days, the longest window
    /// of the SRE workbook's burn-rate table).
    pub minute_history: u32,
    /// Most apps (source ids) tracked at once; envelopes of further apps are dropped and counted
    /// (`app_cap`) until an idle app is forgotten. Default 1000.
    pub max_apps: usize,
    /// Most instances tracked per app; further instances still count towards the app's totals
    /// but get no series of their own (`instance_cap`). Default 256.
    pub max_instances_per_app: usize,
    /// Most distinct custom gauge names per app, beyond the executor's container gauges
    /// (`gauge_name_cap`). Default 32.
    pub max_custom_gauges: usize,
    /// Most distinct values of a tracked tag per app (router error reasons), beyond which the
    /// value is counted as `other` (`tag_value_cap`). Default 16.
    pub max_tag_values: usize,
    /// Longest source id, instance id, gauge name or tag value kept, in bytes (`name_too_long`).
    /// Default 256.
    pub max_name_bytes: usize,
    /// An instance silent for this long is forgotten (it stopped or was scaled in). Default 300.
    pub forget_instance_secs: u32,
    /// An app silent for this long is forgotten with its minute counts. Default 259200 (3 days).
    pub forget_app_secs: u32,
}

impl Default for WindowsConfig {
    fn default() -> Self {
        Self {
            horizon_secs: 300,
            latency_fine_secs: 10,
            latency_block_secs: 10,
            latency_max_secs: 600,
            minute_history: 4320,
            max_apps: 1000,
            max_instances_per_app: 256,
            max_custom_gauges: 32,
            max_tag_values: 16,
            max_name_bytes: 256,
            forget_instance_secs: 300,
            forget_app_secs: 259_200,
        }
    }
}

impl WindowsConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first unusable field and what to write instead.
    pub fn validate(&self) -> Result<(), Error> {
        let ranges: [(&'static str, u64, u64, u64); 11] = [
            ("horizon_secs", u64::from(self.horizon_secs), 2, 3600),
            (
                "latency_fine_secs",
                u64::from(self.latency_fine_secs),
                1,
                300,
            ),
            (
                "latency_block_secs",
                u64::from(self.latency_block_secs),
                1,
                300,
            ),
            (
                "latency_max_secs",
                u64::from(self.latency_max_secs),
                1,
                86_400,
            ),
            ("minute_history", u64::from(self.minute_history), 1, 44_640),
            ("max_apps", self.max_apps as u64, 1, 1_000_000),
            (
                "max_instances_per_app",
                self.max_instances_per_app as u64,
                1,
                100_000,
            ),
            ("max_custom_gauges", self.max_custom_gauges as u64, 0, 1024),
            ("max_tag_values", self.max_tag_values as u64, 0, 1024),
            ("max_name_bytes", self.max_name_bytes as u64, 16, 65_536),
            (
                "forget_instance_secs",
                u64::from(self.forget_instance_secs),
                1,
                u64::from(u32::MAX),
            ),
        ];
        for (field, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return Err(Error::Config {
                    field,
                    message: format!("({value}) must be between {low} and {high}"),
                });
            }
        }
        if self.latency_fine_secs > self.horizon_secs {
            return Err(Error::Config {
                field: "latency_fine_secs",
                message: format!(
                    "({}) must not exceed horizon_secs ({}): no window is longer than the horizon",
                    self.latency_fine_secs, self.horizon_secs
                ),
            });
        }
        if self.forget_app_secs < self.forget_instance_secs {
            return Err(Error::Config {
                field: "forget_app_secs",
                message: format!(
                    "({}) must be at least forget_instance_secs ({}), or apps would vanish \
                     while their instances are still listed",
                    self.forget_app_secs, self.forget_instance_secs
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_unknown_fields_are_refused() {
        WindowsConfig::default().validate().unwrap();
        let c: WindowsConfig = toml::from_str("horizon_secs = 120").unwrap();
        assert_eq!(c.horizon_secs, 120);
        assert_eq!(c.max_apps, 1000);
        assert!(toml::from_str::<WindowsConfig>("horizon = 120").is_err());
    }

    #[test]
    fn validate_names_the_field() {
        let bad = WindowsConfig {
            horizon_secs: 1,
            ..WindowsConfig::default()
        };
        let msg = bad.validate().unwrap_err().to_string();
        assert!(msg.contains("`horizon_secs`"), "{msg}");
        let bad = WindowsConfig {
            horizon_secs: 5,
            ..WindowsConfig::default()
        };
        let msg = bad.validate().unwrap_err().to_string();
        assert!(msg.contains("`latency_fine_secs`"), "{msg}");
        let bad = WindowsConfig {
            forget_app_secs: 10,
            ..WindowsConfig::default()
        };
        let msg = bad.validate().unwrap_err().to_string();
        assert!(msg.contains("`forget_app_secs`"), "{msg}");
    }
}
