//! PR-comment commands: each parsed line is checked for permission and run by one function per
//! command; `replies` renders what it returns.

use anyhow::Context as _;

use crate::engine::{DlqMode, ResumeRequest, Resumed, RetryRequest};
use crate::github::{CommentId, InstallationId, PrNumber, Reaction};
use crate::store::{Job, StoreError};
use crate::types::{ItemKey, RepoName};

use super::leases::{Failure, classify};
use super::{CancelOutcome, JobAction, PrTurn, Runner, Slots, Started};
use crate::server::commands::{JobRef, PrCommand, parse_comment};
use crate::server::dispatch::CommentWork;
use crate::server::replies::{
    self, CancelReason, CancelReply, Refusal, Reply, StatusRow, WorkflowStart,
};
use crate::server::reporting::JobContext;

impl Runner {
    pub(super) async fn on_comment(
        &self,
        w: CommentWork,
        slots: &mut Slots,
    ) -> anyhow::Result<String> {
        let installation = InstallationId(w.installation);
        let github = &self.p().github;
        if let Err(e) = github
            .create_reaction(
                installation,
                &w.repo,
                CommentId(w.comment_id),
                Reaction::Eyes,
            )
            .await
        {
            tracing::warn!(error = %e, "cannot add the eyes reaction");
        }
        let mut permission = None;
        let mut replied = 0;
        for line in parse_comment(&w.body, self.p().app_slug.as_deref()) {
            let reply = match &line.result {
                Err(e) => replies::command_error(&line.line, e),
                Ok(command) => {
                    if command.needs_write_permission() {
                        let p = match permission {
                            Some(p) => p,
                            None => {
                                let p = github
                                    .collaborator_permission(installation, &w.repo, &w.author)
                                    .await
                                    .context("cannot check the commenter's permission")?;
                                permission = Some(p);
                                p
                            }
                        };
                        if !crate::comments::allowed(command, p) {
                            self.comment(
                                installation,
                                &w.repo,
                                w.number,
                                &replies::permission_refused(&w.author, command),
                            )
                            .await;
                            replied += 1;
                            continue;
                        }
                    }
                    let reply = match self.execute(command, &w, slots).await {
                        Ok(reply) => reply,
                        // GitHub or the database is away for now: the request is tried again
                        // later (answered then), rather than answered with a failure.
                        Err(e) if matches!(classify(&e), Failure::Transient(_)) => return Err(e),
                        Err(e) => Reply::CommandFailed {
                            command: command.name(),
                            error: format!("{e:#}"),
                        },
                    };
                    replies::render(&reply)
                }
            };
            self.comment(installation, &w.repo, w.number, &reply).await;
            replied += 1;
        }
        Ok(format!("{replied} commands answered"))
    }

    /// Runs one command: one function per command, each returning what `replies` renders.
    pub(super) async fn execute(
        &self,
        command: &PrCommand,
        w: &CommentWork,
        slots: &mut Slots,
    ) -> anyhow::Result<Reply> {
        match command {
            PrCommand::Help => Ok(Reply::Help {
                app_slug: self.p().app_slug.clone(),
            }),
            PrCommand::Status => self.status(&w.repo, w.number).await,
            PrCommand::Run { workflow } => self.run_command(workflow.as_deref(), w, slots).await,
            PrCommand::Cancel { job } => self.cancel_command(job.as_ref(), w).await,
            PrCommand::Resume { job, budget } => {
                let job = match self.resolve(&w.repo, w.number, job.as_ref()).await? {
                    Ok(job) => job,
                    Err(reply) => return Ok(reply),
                };
                let request = ResumeRequest {
                    dlq: DlqMode::default(),
                    max_parallel: None,
                    budget: budget.map(|usd| crate::workflow::Budget {
                        max_cost_usd: Some(usd.get()),
                        ..Default::default()
                    }),
                };
                let action = JobAction::Resume(job.id, request);
                self.restart(command.name(), &job, action, w, slots).await
            }
            PrCommand::Retry { job, item } => {
                let job = match self.resolve(&w.repo, w.number, job.as_ref()).await? {
                    Ok(job) => job,
                    Err(reply) => return Ok(reply),
                };
                let items: Vec<ItemKey> = item.iter().map(|i| ItemKey(i.clone())).collect();
                if let Some(key) = items.first() {
                    let dlq = self.p().store.dlq(Some(job.id)).await?;
                    if !dlq.iter().any(|d| &d.key == key) {
                        return Ok(Reply::NotInDlq {
                            job: self.link(job.id),
                            item: key.0.clone(),
                        });
                    }
                }
                let request = RetryRequest {
                    items,
                    ..Default::default()
                };
                let action = JobAction::Retry(job.id, request);
                self.restart(command.name(), &job, action, w, slots).await
            }
        }
    }

    /// `run [workflow=NAME]`: supersedes the pull request's jobs of the selected workflows and
    /// starts them at the head commit.
    async fn run_command(
        &self,
        workflow: Option<&str>,
        w: &CommentWork,
        slots: &mut Slots,
    ) -> anyhow::Result<Reply> {
        let installation = InstallationId(w.installation);
        let pr = self
            .p()
            .github
            .pull_request(installation, &w.repo, PrNumber(w.number))
            .await
            .context("cannot read the pull request")?;
        let sha = pr.head_sha.0;
        let config = match self
            .load_config(installation, &w.repo, w.number, &sha)
            .await?
        {
            Ok(c) => c,
            Err(reply) => return Ok(reply),
        };
        let selected = config.select(workflow);
        if selected.is_empty() {
            return Ok(Reply::UnknownWorkflow {
                name: workflow.unwrap_or("").to_string(),
                known: config.workflows.clone(),
            });
        }
        // Over the daily cap nothing starts, so nothing is superseded either.
        if let Some(why) = self.repo_over_daily_cap(&w.repo).await {
            let refused: Vec<WorkflowStart> = selected
                .iter()
                .map(|workflow| WorkflowStart::Refused {
                    workflow: workflow.clone(),
                    why: Refusal::OverDailyCap {
                        why: why.clone(),
                        automatic: false,
                    },
                })
                .collect();
            return Ok(Reply::JobsStarted {
                head_sha: sha,
                starts: refused,
            });
        }
        // An explicit command supersedes older jobs as a push does.
        let turn = PrTurn::join(self.pr_lock(&w.repo, w.number)).await;
        let _turn = turn.wait(slots).await;
        let reason = replies::cancel_reason(&CancelReason::RunCommand {
            head_sha: sha.clone(),
        });
        for job in self.jobs_of_pr(&w.repo, w.number).await? {
            let same_workflow = selected.contains(&job.workflow_path);
            if same_workflow && !job.status.is_finished() {
                self.cancel_job(&job, &reason, false).await?;
            }
        }
        let starts = self
            .start_workflows(
                installation,
                &w.repo,
                w.number,
                &sha,
                &config,
                &selected,
                slots,
            )
            .await;
        Ok(Reply::JobsStarted {
            head_sha: sha,
            starts,
        })
    }

    /// `cancel [job=ID]`.
    async fn cancel_command(&self, job: Option<&JobRef>, w: &CommentWork) -> anyhow::Result<Reply> {
        let job = match self.resolve(&w.repo, w.number, job).await? {
            Ok(job) => job,
            Err(reply) => return Ok(reply),
        };
        let reason = CancelReason::Command {
            user: w.author.clone(),
        };
        let outcome = self
            .cancel_job(&job, &replies::cancel_reason(&reason), false)
            .await?;
        Ok(Reply::Cancel {
            job: self.link(job.id),
            outcome: match outcome {
                CancelOutcome::Cancelled => CancelReply::Cancelled,
                CancelOutcome::Stopping(holder) => CancelReply::Stopping { holder },
                CancelOutcome::AlreadyFinished(s) => CancelReply::AlreadyFinished(s),
            },
        })
    }

    /// `resume` and `retry`: runs `action` on `job` in a job task, answering once it started
    /// (or ended without starting).
    async fn restart(
        &self,
        command: &'static str,
        job: &Job,
        action: JobAction,
        w: &CommentWork,
        slots: &mut Slots,
    ) -> anyhow::Result<Reply> {
        let installation = InstallationId(w.installation);
        let link = self.link(job.id);
        let retry = matches!(action, JobAction::Retry(..));
        // The clone may be gone (a new disk, a cleaned cache): fetch the job's commit.
        if let Some(sha) = &job.head_sha {
            let token = self.token_for_git(installation, &w.repo).await?;
            self.p()
                .repos
                .prepare(&w.repo, Some(PrNumber(w.number)), sha, token)
                .await?;
        }
        let ctx = JobContext {
            repo: w.repo.clone(),
            pr_number: Some(w.number),
            head_sha: job.head_sha.clone(),
            installation,
            workflow: job.workflow_path.clone(),
            links: self.p().links.clone(),
            pass_env: self.recorded_pass_env(job.id).await,
        };
        // A job held by a running resume is answered at once, without waiting for a
        // job slot of this instance.
        if let Some((holder, since)) = self.p().store.lock_holder(job.id).await? {
            return Ok(Reply::ResumeHeld {
                job: link,
                holder,
                since,
            });
        }
        let permit = slots.take().await;
        let started = self.start_job(action, ctx, permit).await;
        Ok(match started {
            Ok(Started::Running(_)) => Reply::Resuming { job: link, retry },
            Ok(Started::Ended(Ok(Resumed::Held { holder, since }))) => Reply::ResumeHeld {
                job: link,
                holder,
                since,
            },
            Ok(Started::Ended(Ok(Resumed::AlreadyFinished { status, dlq }))) => {
                Reply::AlreadyFinished {
                    job: link,
                    status,
                    dlq,
                }
            }
            Ok(Started::Ended(Ok(Resumed::Ran(o)))) => Reply::ResumeEnded {
                job: link,
                status: o.status,
                counts: o.counts,
            },
            Ok(Started::Ended(Err(e))) => Reply::CommandFailed {
                command,
                error: format!("{e:#}"),
            },
            Ok(Started::Rerun(_)) | Err(_) => Reply::CommandFailed {
                command,
                error: "the job task stopped".into(),
            },
        })
    }

    /// The job a command names (`job=` prefix, of this repository), or the pull request's
    /// latest. `Ok(Err(reply))` when there is none.
    pub(super) async fn resolve(
        &self,
        repo: &RepoName,
        pr: u64,
        wanted: Option<&JobRef>,
    ) -> anyhow::Result<Result<Job, Reply>> {
        let Some(wanted) = wanted else {
            let latest = self.jobs_of_pr(repo, pr).await?.into_iter().next();
            return Ok(latest.ok_or(Reply::NoSuchJob(None)));
        };
        match self.p().store.find_job(wanted.as_str()).await {
            // A job of another repository is not this comment's to control.
            Ok(job) if job.repo.as_ref() == Some(repo) => Ok(Ok(job)),
            Ok(_) | Err(StoreError::JobNotFound(_)) | Err(StoreError::AmbiguousJob { .. }) => {
                Ok(Err(Reply::NoSuchJob(Some(wanted.as_str().to_string()))))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn status(&self, repo: &RepoName, pr: u64) -> anyhow::Result<Reply> {
        let mut rows = Vec::new();
        for job in self.jobs_of_pr(repo, pr).await? {
            rows.push(StatusRow {
                job: self.link(job.id),
                counts: self.p().store.item_counts(job.id).await?,
                workflow: job.workflow_path,
                head_sha: job.head_sha.map(|s| s.0),
                status: job.status,
                phase: job.phase,
            });
        }
        Ok(Reply::Status(rows))
    }
}
