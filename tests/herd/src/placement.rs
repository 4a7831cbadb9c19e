//! Where a live run's two sides run: with `--placement split`, the collectors on some of this
//! machine's CPUs and the meters (this process, with its DNS server and the capacity probe) on
//! the others, so that a herd is judged by what a collector fleet does with the CPU a small
//! collector host would have, not by how one machine shares its CPUs between both sides.
//!
//! Placement is by CPU affinity: this process pins each of its threads (threads started later
//! inherit it), and each collector starts under `taskset`, so every thread it ever has is
//! placed. cgroup cpusets would also stop a process from widening its own set; neither side
//! here does. The NATS servers are not placed (they run wherever the kernel puts them).
//!
//! The first wave's thread (its meters stand for hosts already connected, on hosts of their own)
//! runs at a raised priority ([`FIRST_WAVE_NICE`]) in either placement, so that the herd's
//! start-up in this process does not queue in front of it: its ack latency is then what the
//! fleet does to established meters, not how one process shares a CPU. Raising needs
//! `CAP_SYS_NICE` (root); without it the run goes on and the report says so.
//!
//! Owns: the split, the pinning and the first wave's priority. Must never: pin anything with
//! `--placement shared`.

use std::ffi::OsString;

use serde::Serialize;

use ringflow_tests::process::CollectorCommand;

/// Which CPUs each side of a run had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// "split" or "shared".
    pub mode: &'static str,
    /// CPUs the collectors ran on.
    pub collector_cpus: Vec<usize>,
    /// CPUs the meters (the `herd` process) ran on.
    pub meter_cpus: Vec<usize>,
    /// The nice value the first wave's thread ran at (None: it could not be raised, and ran at
    /// the process's).
    pub first_wave_nice: Option<i32>,
}

/// The first wave's thread's nice value: about nine times the CPU share of a thread at 0 when
/// both want to run, and it is woken ahead of them.
pub const FIRST_WAVE_NICE: i32 = -10;

/// Raises the calling thread to [`FIRST_WAVE_NICE`]; false when not permitted.
pub fn raise_this_thread() -> bool {
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), FIRST_WAVE_NICE).is_ok()
}

/// The CPUs this thread may run on.
pub fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    let set = rustix::thread::sched_getaffinity(None)?;
    Ok((0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&cpu| set.is_set(cpu))
        .collect())
}

impl Placement {
    /// Both sides on every CPU in `cpus` (nothing pinned).
    pub fn shared(cpus: &[usize]) -> Self {
        Placement {
            mode: "shared",
            collector_cpus: cpus.to_vec(),
            meter_cpus: cpus.to_vec(),
            first_wave_nice: None,
        }
    }

    /// The collectors on the upper half of `cpus` (at least one), the meters on the rest.
    pub fn split(cpus: &[usize]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            cpus.len() >= 2,
            "--placement split needs at least 2 CPUs; this process may use {cpus:?} (use --placement shared)"
        );
        let at = cpus.len() - (cpus.len() / 2).max(1);
        Ok(Placement {
            mode: "split",
            collector_cpus: cpus[at..].to_vec(),
            meter_cpus: cpus[..at].to_vec(),
            first_wave_nice: None,
        })
    }

    fn is_split(&self) -> bool {
        self.mode == "split"
    }

    /// Pins every thread of this process to the meters' CPUs (split only).
    pub fn pin_this_process(&self) -> anyhow::Result<()> {
        if !self.is_split() {
            return Ok(());
        }
        let mut set = rustix::thread::CpuSet::new();
        for &cpu in &self.meter_cpus {
            set.set(cpu);
        }
        for task in std::fs::read_dir("/proc/self/task")? {
            let tid: i32 = task?.file_name().to_string_lossy().parse()?;
            // A thread that ended since the listing is no error.
            if let Some(tid) = rustix::thread::Pid::from_raw(tid) {
                match rustix::thread::sched_setaffinity(Some(tid), &set) {
                    Ok(()) | Err(rustix::io::Errno::SRCH) => {}
                    Err(e) => anyhow::bail!("pinning thread {tid:?} to CPUs {:?}: {e}", self.meter_cpus),
                }
            }
        }
        Ok(())
    }

    /// `command` started under `taskset` on the collectors' CPUs (split only), so that the
    /// collector's first thread, and so every other, is placed before it runs.
    pub fn collector_command(&self, command: CollectorCommand) -> CollectorCommand {
        if !self.is_split() {
            return command;
        }
        let cpus: Vec<String> = self.collector_cpus.iter().map(usize::to_string).collect();
        let mut leading_args: Vec<OsString> = vec!["-c".into(), cpus.join(",").into(), command.binary.into()];
        leading_args.extend(command.leading_args);
        CollectorCommand {
            binary: "taskset".into(),
            leading_args,
            log_dir: command.log_dir,
        }
    }

    /// One line for the report: what each side had.
    pub fn describe(&self) -> String {
        let wave = match self.first_wave_nice {
            Some(nice) => format!("; first wave at nice {nice}"),
            None => "; first wave not raised (no CAP_SYS_NICE)".to_owned(),
        };
        let sides = match self.mode {
            "split" => format!(
                "collectors on CPUs {:?}, meters on CPUs {:?} (affinity)",
                self.collector_cpus, self.meter_cpus
            ),
            _ => format!("collectors and meters share CPUs {:?}", self.meter_cpus),
        };
        sides + &wave
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_gives_the_collectors_the_upper_half_and_at_least_one_cpu() {
        let two = Placement::split(&[0, 1]).unwrap();
        assert_eq!((two.collector_cpus, two.meter_cpus), (vec![1], vec![0]));
        let five = Placement::split(&[0, 1, 2, 3, 4]).unwrap();
        assert_eq!(
            (five.collector_cpus, five.meter_cpus),
            (vec![3, 4], vec![0, 1, 2])
        );
        let err = Placement::split(&[3]).unwrap_err().to_string();
        assert!(err.contains("--placement shared"), "{err}");
    }

    #[test]
    fn a_split_collector_starts_under_taskset_and_a_shared_one_as_it_was() {
        let command = CollectorCommand {
            binary: "/bin/herd".into(),
            leading_args: vec!["collector".into()],
            log_dir: None,
        };
        let split = Placement::split(&[0, 1, 2, 3])
            .unwrap()
            .collector_command(command.clone());
        assert_eq!(split.binary, std::path::PathBuf::from("taskset"));
        assert_eq!(
            split.leading_args,
            ["-c", "2,3", "/bin/herd", "collector"].map(OsString::from)
        );
        let shared = Placement::shared(&[0, 1]).collector_command(command.clone());
        assert_eq!(shared.binary, command.binary);
    }

    #[test]
    fn this_process_can_be_pinned_and_keeps_its_cpus() {
        // Pinning to every CPU it already has changes nothing, and must succeed for every
        // thread of this test process.
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        let all = Placement {
            mode: "split",
            collector_cpus: cpus.clone(),
            meter_cpus: cpus.clone(),
            first_wave_nice: None,
        };
        all.pin_this_process().unwrap();
        assert_eq!(allowed_cpus().unwrap(), cpus);
    }
}
