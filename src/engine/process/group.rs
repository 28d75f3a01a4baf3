//! The command's process group: SIGTERM then SIGKILL to the whole tree, whether it is still
//! alive, and the guard that kills it when `run` is left early.

use std::io;
use std::process::ExitStatus;
use std::time::Instant;

use tokio::process::Child;

use super::{KILL_GRACE, POLL, REAP_WAIT};

/// SIGTERM to the group, SIGKILL to whatever is left after [`KILL_GRACE`]. When given the
/// leader (not yet reaped), waits for it and returns its status. Does nothing when the group is
/// already empty.
pub(super) async fn terminate_group(
    pgid: i32,
    mut leader: Option<&mut Child>,
) -> io::Result<Option<ExitStatus>> {
    let mut status = None;
    if !group_alive(pgid) {
        if let Some(child) = leader {
            status = Some(child.wait().await?);
        }
        return Ok(status);
    }
    signal_group(pgid, libc::SIGTERM);
    let give_up = Instant::now() + KILL_GRACE;
    loop {
        if let Some(child) = leader.as_deref_mut()
            && status.is_none()
        {
            status = child.try_wait()?;
        }
        // An unreaped leader is a zombie that still counts as a member; once it is reaped (or
        // was never ours to reap), an empty group means everything is gone.
        let leader_done = leader.is_none() || status.is_some();
        if leader_done && !group_alive(pgid) {
            return Ok(status);
        }
        if Instant::now() >= give_up {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    signal_group(pgid, libc::SIGKILL);
    if let Some(child) = leader
        && status.is_none()
    {
        status = Some(child.wait().await?);
    }
    let give_up = Instant::now() + REAP_WAIT;
    while group_alive(pgid) && Instant::now() < give_up {
        tokio::time::sleep(POLL).await;
    }
    Ok(status)
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: killpg has no memory-safety preconditions. The group id is our child's pid, which
    // cannot be reused while any member of the group (or the unreaped leader) exists.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

/// Whether any process of the group still runs.
fn group_alive(pgid: i32) -> bool {
    // Signal 0 checks for existence without sending anything. EPERM means members exist that we
    // may not signal, which still counts as alive.
    // SAFETY: as in `signal_group`.
    let rc = unsafe { libc::killpg(pgid, 0) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    // Members exist, but dead orphans stay members as zombies until init reaps them, and some
    // container inits reap only every few seconds: without this look every command that left
    // a finished orphan behind would wait out the whole grace period.
    live_member_in_proc(pgid).unwrap_or(true)
}

/// Without /proc (macOS) a group with members counts as alive until the grace period ends.
#[cfg(not(target_os = "linux"))]
fn live_member_in_proc(_pgid: i32) -> Option<bool> {
    None
}

/// Scans /proc for a member of the group that is not a zombie; `None` without /proc.
#[cfg(target_os = "linux")]
fn live_member_in_proc(pgid: i32) -> Option<bool> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        if !name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        // Gone since the listing: not a member any more.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`; comm may contain spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split_ascii_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|f| f.parse::<i32>().ok());
        if pgrp == Some(pgid) && !matches!(state, Some("Z" | "X")) {
            return Some(true);
        }
    }
    Some(false)
}

/// Kills the group when `run` is left before the group is known dead, e.g. because the caller
/// dropped the future. No grace period: a destructor cannot wait.
pub(super) struct GroupGuard {
    pub(super) pgid: i32,
    pub(super) armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            signal_group(self.pgid, libc::SIGKILL);
        }
    }
}
