//! What the kernel says a process has used: CPU time, resident memory and context switches,
//! from `/proc`.
//!
//! Owns: reading `/proc/PID/stat`, `/proc/PID/status` and its threads' `schedstat` and `status`.
//! Must never: interpret the figures.

use anyhow::Context;
use tokio::time::Instant;

/// CPU time (user + system, every thread, exited ones too) process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: fields are counted after its
    // closing parenthesis. utime and stime are fields 14 and 15, the 12th and 13th after it.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("no command name in /proc/PID/stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("field {} of /proc/{pid}/stat", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(total as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// A value in KiB from `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes.
pub fn status_bytes(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// A process's CPU clock, read at two moments.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    pid: u32,
    cpu: f64,
    at: Instant,
}

impl CpuMark {
    pub fn now(pid: u32) -> anyhow::Result<Self> {
        Ok(Self {
            pid,
            cpu: cpu_seconds(pid)?,
            at: Instant::now(),
        })
    }

    /// CPU seconds used since this mark, and the wall-clock seconds that passed.
    pub fn since(&self) -> anyhow::Result<(f64, f64)> {
        let cpu = cpu_seconds(self.pid)? - self.cpu;
        Ok((cpu, self.at.elapsed().as_secs_f64()))
    }
}

/// The CPU clocks of several named processes, read at two moments.
#[derive(Debug, Clone)]
pub struct CpuMarks(Vec<(&'static str, CpuMark)>);

impl CpuMarks {
    pub fn now(processes: &[(&'static str, u32)]) -> anyhow::Result<Self> {
        processes
            .iter()
            .map(|&(name, pid)| Ok((name, CpuMark::now(pid)?)))
            .collect::<anyhow::Result<_>>()
            .map(Self)
    }

    /// Each process's CPU seconds since these marks, and the wall-clock seconds that passed.
    pub fn since(&self) -> anyhow::Result<(Vec<(&'static str, f64)>, f64)> {
        let mut wall = 0.0;
        let used = self
            .0
            .iter()
            .map(|(name, mark)| {
                let (cpu, seconds) = mark.since()?;
                wall = seconds;
                Ok((*name, cpu))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok((used, wall))
    }
}

/// What a process's threads have used, read from `/proc/PID/task/TID/{schedstat,status}`: CPU
/// time to the nanosecond and voluntary context switches (each one a thread going to sleep until
/// something wakes it). A thread that exits takes its figures with it, so two readings compare
/// only while every thread of the first is still alive; [`ThreadsMark::since`] falls back to
/// [`CpuMark`]'s whole-process clock (10 ms ticks, exited threads included) when one is gone.
#[derive(Debug, Clone)]
pub struct ThreadsMark {
    whole: CpuMark,
    threads: std::collections::BTreeMap<u32, ThreadUse>,
}

#[derive(Debug, Clone, Copy, Default)]
struct ThreadUse {
    cpu_nanos: u64,
    voluntary_switches: u64,
}

/// What a process used between a [`ThreadsMark`] and now.
#[derive(Debug, Clone, Copy)]
pub struct ThreadsUse {
    /// CPU seconds: from the threads' nanosecond clocks when `precise`, else from 10 ms ticks.
    pub cpu: f64,
    /// Whether every thread of the first reading was still alive at the second.
    pub precise: bool,
    /// Voluntary context switches of the threads alive at the second reading.
    pub voluntary_switches: u64,
    /// Wall-clock seconds between the readings.
    pub seconds: f64,
}

impl ThreadsMark {
    pub fn now(pid: u32) -> anyhow::Result<Self> {
        Ok(Self {
            threads: threads_use(pid)?,
            whole: CpuMark::now(pid)?,
        })
    }

    /// What the process used since this mark.
    pub fn since(&self) -> anyhow::Result<ThreadsUse> {
        let now = threads_use(self.whole.pid)?;
        let (whole, seconds) = self.whole.since()?;
        let precise = self.threads.keys().all(|tid| now.contains_key(tid));
        let mut cpu_nanos = 0u64;
        let mut voluntary_switches = 0u64;
        for (tid, used) in &now {
            let before = self.threads.get(tid).copied().unwrap_or_default();
            cpu_nanos += used.cpu_nanos.saturating_sub(before.cpu_nanos);
            voluntary_switches += used.voluntary_switches.saturating_sub(before.voluntary_switches);
        }
        Ok(ThreadsUse {
            cpu: if precise { cpu_nanos as f64 / 1e9 } else { whole },
            precise,
            voluntary_switches,
            seconds,
        })
    }
}

/// Each live thread's CPU nanoseconds and voluntary context switches. A thread that exits while
/// it is read is left out.
fn threads_use(pid: u32) -> anyhow::Result<std::collections::BTreeMap<u32, ThreadUse>> {
    let dir = format!("/proc/{pid}/task");
    let mut threads = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        let (Ok(schedstat), Ok(status)) = (
            std::fs::read_to_string(entry.path().join("schedstat")),
            std::fs::read_to_string(entry.path().join("status")),
        ) else {
            continue;
        };
        let cpu_nanos = schedstat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no run time in {dir}/{tid}/schedstat"))?;
        let voluntary_switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no voluntary_ctxt_switches in {dir}/{tid}/status"))?;
        threads.insert(
            tid,
            ThreadUse {
                cpu_nanos,
                voluntary_switches,
            },
        );
    }
    Ok(threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_cpu_and_memory() {
        let pid = std::process::id();
        // Burns CPU until the process's own clock (10 ms ticks) says `at_least` more was used,
        // whatever share of a core this thread gets on a busy machine (bounded at 60 s).
        let burn = |at_least: f64| {
            let start = cpu_seconds(pid).expect("stat");
            let deadline = Instant::now() + std::time::Duration::from_secs(60);
            let mut x = 0u64;
            while cpu_seconds(pid).expect("stat") - start < at_least {
                for _ in 0..100_000 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                assert!(Instant::now() < deadline, "60 s without {at_least} s of CPU");
            }
            std::hint::black_box(x);
        };
        let before = cpu_seconds(pid).expect("stat");
        burn(0.02);
        assert!(cpu_seconds(pid).expect("stat") > before);
        let rss = status_bytes(pid, "VmRSS").expect("rss");
        let mark = ThreadsMark::now(pid).expect("threads");
        let started = Instant::now();
        burn(0.06);
        // The threads' clocks, read apart from the process's, saw the same CPU (tick rounding
        // allowed), and at least the wall time it took passed.
        let used = mark.since().expect("threads since");
        assert!(used.cpu >= 0.05 && used.cpu < 5.0, "{used:?}");
        assert!(
            used.seconds >= started.elapsed().as_secs_f64() * 0.9 && used.seconds > 0.0,
            "{used:?}"
        );
        let peak = status_bytes(pid, "VmHWM").expect("hwm");
        assert!(rss > 0 && peak >= rss);
    }
}
