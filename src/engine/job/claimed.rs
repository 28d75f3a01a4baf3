//! One claimed attempt (README "Many machines"): the agent runs in a pooled slot exactly as a
//! local item's does (`run_agent`), its commits go to the job's remote under
//! `refs/prodigy/<job>/items/<key>/attempt-<n>`, and the attempt is recorded under the claim:
//! outcome, agent runs, log and transcripts, events, in one transaction that only a live claim
//! may write. Merging is the coordinator's: it fetches the ref and merges it in its queue.
//! Shared by `prodigy worker` and a coordinator's own agent slots.

use super::item::{Authority, failure, note_discarded, success};
use super::*;
use crate::engine::claims::Heartbeat;
use crate::engine::remote;
use crate::store::{Claim, ClaimedEnd, StoreError};

/// How a claimed attempt ended for its claimer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claimed {
    /// Recorded; whether the item failed.
    Recorded { failed: bool },
    /// Given back unfinished (this claimer is stopping); it runs again elsewhere.
    Released,
    /// The claim ran out while it ran: nothing was recorded.
    Lost,
}

/// The most of a log or transcript stored for another machine; a longer one keeps its end.
const MAX_STORED_FILE: usize = 4 << 20;

impl JobCore<'_> {
    /// Runs `claim`'s item in `slot` and records it under the claim. `agents` stops the agent
    /// (this claimer is stopping: the item is given back); a lost claim stops it too, and then
    /// nothing is recorded.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run_claimed(
        &self,
        mr: &MapReduce,
        slot: &Slot,
        sched: &Scheduler,
        claim: &Claim,
        hb: &Heartbeat,
        agents: &CancellationToken,
        url: &str,
    ) -> anyhow::Result<Claimed> {
        let token = hb.hold(claim, agents);
        let span = tracing::info_span!("item", job = %claim.job(), key = %claim.key(), attempt = claim.attempt());
        let out = self
            .claimed_attempt(mr, slot, sched, claim, agents, &token, url)
            .instrument(span)
            .await;
        hb.release(claim);
        match out {
            Err(e)
                if e.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<StoreError>(),
                        Some(StoreError::ClaimLost { .. })
                    )
                }) =>
            {
                tracing::warn!("{e:#}");
                Ok(Claimed::Lost)
            }
            other => other,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn claimed_attempt(
        &self,
        mr: &MapReduce,
        slot: &Slot,
        sched: &Scheduler,
        claim: &Claim,
        agents: &CancellationToken,
        token: &CancellationToken,
        url: &str,
    ) -> anyhow::Result<Claimed> {
        let key = claim.key();
        let attempt = claim.attempt();
        let log = self
            .logs
            .join("items")
            .join(sanitize_ref(&key.0))
            .join(format!("attempt-{attempt}.log"));
        self.report(Progress::ItemStarted {
            key: key.clone(),
            attempt,
        });
        let scope = AgentScope::new(self.workflow.agent.clone(), self.engine.agent.clone(), &log);
        // An item whose last attempt conflicted would conflict again from the base: it starts
        // from the job's merged work as the remote has it now.
        let start = if sched.conflicted.contains(key) {
            let head = remote::head_ref(self.job.id);
            remote::fetch(&self.ws.repo, url, std::slice::from_ref(&head)).await?;
            git::git(&self.ws.repo, &["rev-parse", &head]).await?
        } else {
            sched.start.clone()
        };
        let c = Candidate {
            key: key.clone(),
            data: claim.data().clone(),
            source: plan::Source::Pending,
            attempts: attempt.saturating_sub(1),
            position: claim.position(),
        };
        let auth = Authority::Claim(claim);
        let result = self
            .run_agent(
                mr,
                slot,
                &c,
                sched.total,
                &start,
                &log,
                &scope,
                token,
                auth,
                attempt,
            )
            .await?;
        let attempt_ref = remote::attempt_ref(self.job.id, key, attempt);
        let (outcome, event) = match result {
            Err(f) if f.cancelled() && !agents.is_cancelled() => {
                return Err(StoreError::ClaimLost {
                    job: claim.job(),
                    key: key.clone(),
                    attempt,
                }
                .into());
            }
            Err(f) if f.cancelled() => {
                let message = "stopped: the machine running it is stopping; the item runs again";
                step::append_log(&log, &format!("== {message}\n"));
                self.store.release_claim(claim, message).await?;
                return Ok(Claimed::Released);
            }
            Err(f) => {
                self.note_failure(mr, sched, key, &f);
                step::append_log(
                    &log,
                    &format!("== item failed ({}): {}\n", f.class(), f.message()),
                );
                // Keep what the agent committed, for `dlq show`, on the remote.
                let artifact = match git::head(&slot.dir).await {
                    Ok(head) if head != start => {
                        match push_attempt(slot, url, &attempt_ref).await {
                            Ok(()) => Some(attempt_ref.clone()),
                            Err(e) => {
                                tracing::warn!("cannot keep the failed attempt's commits: {e:#}");
                                None
                            }
                        }
                    }
                    _ => None,
                };
                failure(mr, key, attempt, &f, &log, artifact)
            }
            Ok(ctx) => {
                let head = git::head(&slot.dir).await?;
                let commit = (head != start).then_some(head);
                note_discarded(&slot.dir, &log).await;
                let pushed = match &commit {
                    Some(_) => push_attempt(slot, url, &attempt_ref).await,
                    None => Ok(()),
                };
                match pushed {
                    Ok(()) => {
                        sched.finished(mr, None);
                        success(key, attempt, &ctx, commit, &log)
                    }
                    Err(e) => {
                        let f = StepFailure {
                            line: mr.map.agent_template_line,
                            what: "push the attempt's commits".into(),
                            facts: FailureFacts {
                                exit_code: None,
                                signal: None,
                                timed_out: false,
                                message: format!("cannot push to {attempt_ref}: {e:#}"),
                                stage: FailureStage::Worktree,
                            },
                        };
                        self.note_failure(mr, sched, key, &f);
                        step::append_log(&log, &format!("== item failed: {}\n", f.message()));
                        failure(mr, key, attempt, &f, &log, None)
                    }
                }
            }
        };
        let runs = agent_runs("map", Some((key, attempt)), &scope);
        let mut files = vec![("log".to_string(), read_tail(&log))];
        for (run, _) in &runs {
            files.push((
                run.transcript.clone(),
                read_tail(Path::new(&run.transcript)),
            ));
        }
        let rows: Vec<NewAgentRun> = runs.iter().map(|(r, _)| r.clone()).collect();
        let mut events: Vec<JobEvent> = runs.into_iter().map(|(_, e)| e).collect();
        events.push(event);
        self.store
            .finish_claimed(
                claim,
                &ClaimedEnd {
                    outcome: &outcome,
                    runs: &rows,
                    files: &files,
                    events: &events,
                },
            )
            .await?;
        if outcome.success {
            self.report(Progress::ItemSucceeded { key: key.clone() });
        } else {
            self.report(Progress::ItemFailed {
                key: key.clone(),
                class: outcome.error_class.unwrap_or(ErrorClass::Unknown),
                message: outcome.message.clone().unwrap_or_default(),
            });
        }
        Ok(Claimed::Recorded {
            failed: !outcome.success,
        })
    }
}

/// Pushes the slot's HEAD to the attempt's ref on the remote (hooks off: the agent could have
/// written them).
async fn push_attempt(slot: &Slot, url: &str, attempt_ref: &str) -> anyhow::Result<()> {
    remote::push(
        &slot.dir,
        url,
        &[("HEAD".to_string(), attempt_ref.to_string())],
        None,
    )
    .await
}

/// A text file's content for the database: lossy UTF-8, at most [`MAX_STORED_FILE`] bytes (the
/// end), empty when it cannot be read.
fn read_tail(path: &Path) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let from = bytes.len().saturating_sub(MAX_STORED_FILE);
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}
