//! The process's own resources, read from `/proc/self` when Prometheus scrapes: CPU
//! time, memory, threads, open and allowed file descriptors, start time (the names of
//! Prometheus's client libraries' `process_*` metrics, under remora's prefix), and the
//! tasks alive on its runtime (what a leak of connections or timers would grow).
//! Nothing is sampled between scrapes; on a system without `/proc` nothing is written.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Encodes `process_*` at each scrape.
#[derive(Debug)]
pub(super) struct ProcessMetrics;

/// What `/proc/self/stat` says, in units of its own.
#[derive(Debug, PartialEq)]
struct Stat {
    /// User and system CPU time, in clock ticks.
    cpu_ticks: u64,
    threads: i64,
    /// Start, in clock ticks after boot.
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

/// Reads the fields after the command name (which may hold spaces and parentheses).
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3).copied();
    Some(Stat {
        cpu_ticks: field(14)?.parse::<u64>().ok()? + field(15)?.parse::<u64>().ok()?,
        threads: field(20)?.parse().ok()?,
        start_ticks: field(22)?.parse().ok()?,
        virtual_bytes: field(23)?.parse().ok()?,
        resident_pages: field(24)?.parse().ok()?,
    })
}

/// The soft limit on open files, from `/proc/self/limits`.
fn max_fds(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Seconds since the epoch at boot, from `/proc/stat`.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

impl Collector for ProcessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(stat) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .as_deref()
            .and_then(parse_stat)
        else {
            return Ok(());
        };
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as u64;
        let cpu = ConstCounter::new(stat.cpu_ticks as f64 / ticks);
        let metric = encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time the process used",
            None,
            cpu.metric_type(),
        )?;
        cpu.encode(metric)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory (RSS)",
                Some((stat.resident_pages * page) as i64),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size",
                Some(stat.virtual_bytes as i64),
            ),
            (
                "process_threads",
                "Threads of the process",
                Some(stat.threads),
            ),
            (
                "process_open_fds",
                "Open file descriptors (sockets included)",
                std::fs::read_dir("/proc/self/fd")
                    .ok()
                    .map(|dir| dir.count() as i64),
            ),
            (
                "process_max_fds",
                "The limit on open file descriptors",
                std::fs::read_to_string("/proc/self/limits")
                    .ok()
                    .as_deref()
                    .and_then(max_fds),
            ),
            (
                "runtime_tasks",
                "Tasks alive on the tokio runtime (one per connection, plus remora's own)",
                tokio::runtime::Handle::try_current()
                    .ok()
                    .map(|runtime| runtime.metrics().num_alive_tasks() as i64),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process, in seconds since the Unix epoch",
                std::fs::read_to_string("/proc/stat")
                    .ok()
                    .as_deref()
                    .and_then(boot_time)
                    .map(|boot| (boot as f64 + stat.start_ticks as f64 / ticks) as i64),
            ),
        ];
        for (name, help, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_past_a_command_name_with_spaces() {
        let text = "4242 (remora (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    250 50 0 0 20 0 7 0 123456 104857600 2048 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                cpu_ticks: 300,
                threads: 7,
                start_ticks: 123456,
                virtual_bytes: 104857600,
                resident_pages: 2048,
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn limits_and_boot_time_are_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_fds(limits), Some(1024));
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn this_process_reads() {
        let text = std::fs::read_to_string("/proc/self/stat").unwrap();
        let stat = parse_stat(&text).expect("parses");
        assert!(stat.threads >= 1 && stat.resident_pages > 0);
    }
}
