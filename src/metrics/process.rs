//! What the process costs the machine, read from `/proc/self` at scrape time (Linux; elsewhere these are left out).
//! Named as every Prometheus client library names them (`process_*`), so existing dashboards and alerts apply.

use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct ProcessStats {
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub start_time_seconds: Option<f64>,
}

pub fn read(started_at: SystemTime) -> ProcessStats {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| status_field(&status, key).map(|v| v * 1024);
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    ProcessStats {
        resident_bytes: kib("VmRSS:"),
        virtual_bytes: kib("VmSize:"),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64),
        max_fds: soft_limit(&limits, "Max open files"),
        cpu_seconds: cpu_seconds(),
        start_time_seconds: started_at
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs_f64()),
    }
}

/// The number after `key` in /proc/self/status ("VmRSS:   1234 kB" gives 1234).
fn status_field(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The soft limit of one line of /proc/self/limits ("Max open files  1024  524288  files").
fn soft_limit(limits: &str, name: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// User plus system CPU time of the whole process.
fn cpu_seconds() -> Option<f64> {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(secs(u.user_time()) + secs(u.system_time()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_limits_lines() {
        let status = "Name:\tshardpool\nVmSize:\t  20000 kB\nVmRSS:\t    1234 kB\nThreads:\t3\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(1234));
        assert_eq!(status_field(status, "Threads:"), Some(3));
        assert_eq!(status_field(status, "VmSwap:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(soft_limit(limits, "Max open files"), Some(1024));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let p = read(SystemTime::now());
        assert!(p.resident_bytes.is_some_and(|b| b > 0));
        assert!(p.open_fds.is_some_and(|n| n >= 3));
        assert!(p.max_fds.is_some());
        assert!(p.cpu_seconds.is_some());
    }
}
