//! The standard `process_*` metrics of this process (the names every Prometheus client
//! library exports), read from `/proc/self` when scraped. On a system without `/proc` they
//! are simply absent.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// `USER_HZ`: the unit of CPU times in `/proc/<pid>/stat` on every Linux architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads `/proc/self` at each scrape.
#[derive(Debug)]
pub struct ProcessCollector;

/// What one read of `/proc/self` gives.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    start_time_seconds: f64,
    virtual_bytes: i64,
    resident_bytes: i64,
    threads: i64,
    open_fds: i64,
    max_fds: i64,
}

/// Parses `/proc/self/stat` (fields after the command name, which may hold spaces), with the
/// boot time from `/proc/stat` and the page size.
fn parse_stat(stat: &str, boot_time: f64, page_size: i64) -> Option<Sample> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) ... utime(11) stime(12) ... num_threads(17) ...
    // starttime(19) vsize(20) rss(21).
    let num = |i: usize| fields.get(i)?.parse::<i64>().ok();
    Some(Sample {
        cpu_seconds: (num(11)? + num(12)?) as f64 / TICKS_PER_SECOND,
        threads: num(17)?,
        start_time_seconds: boot_time + num(19)? as f64 / TICKS_PER_SECOND,
        virtual_bytes: num(20)?,
        resident_bytes: num(21)? * page_size,
        ..Sample::default()
    })
}

fn read() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
    // SAFETY: sysconf only reads a system constant.
    let page_size: i64 = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let mut sample = parse_stat(&stat, boot_time, page_size)?;
    sample.open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        sample.max_fds = i64::try_from(limit.rlim_cur).unwrap_or(i64::MAX);
    }
    Some(sample)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let start = ConstGauge::new(s.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            None,
            start.metric_type(),
        )?)?;
        for (name, help, value) in [
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_bytes,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_bytes,
            ),
            ("process_threads", "Number of OS threads", s.threads),
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                s.max_fds,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_spaces_in_the_command_parses() {
        let stat = "4242 (tokio runtime) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                    250 150 0 0 20 0 9 0 5000 123456789 3000 18446744073709551615";
        let s = parse_stat(stat, 1_700_000_000.0, 4096).expect("parses");
        assert_eq!(s.cpu_seconds, 4.0);
        assert_eq!(s.threads, 9);
        assert_eq!(s.start_time_seconds, 1_700_000_050.0);
        assert_eq!(s.virtual_bytes, 123_456_789);
        assert_eq!(s.resident_bytes, 3000 * 4096);
    }

    #[test]
    fn this_process_reads_itself() {
        let s = read().expect("/proc/self on Linux");
        assert!(s.resident_bytes > 0 && s.threads >= 1 && s.open_fds >= 1);
        assert!(s.max_fds >= s.open_fds, "{s:?}");
    }
}
