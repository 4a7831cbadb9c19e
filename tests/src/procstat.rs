//! What the kernel says a process has used: CPU time and resident memory, from `/proc`.
//!
//! Owns: reading `/proc/PID/stat` and `/proc/PID/status`. Must never: interpret the figures.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_cpu_and_memory() {
        let pid = std::process::id();
        let before = cpu_seconds(pid).expect("stat");
        // Burn a little CPU so the clock (10 ms ticks) must move.
        let mut x = 0u64;
        let until = std::time::Duration::from_millis(60);
        let started = Instant::now();
        while started.elapsed() < until {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(pid).expect("stat") > before);
        let rss = status_bytes(pid, "VmRSS").expect("rss");
        let peak = status_bytes(pid, "VmHWM").expect("hwm");
        assert!(rss > 0 && peak >= rss);
    }
}
