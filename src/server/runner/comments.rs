//! PR-comment commands: each parsed line is checked for permission and run by one function per
//! command; `replies` renders what it returns.

use anyhow::Context as _;

use crate::engine::{DlqMode, ResumeRequest, Resumed, RetryRequest, RunOutcome};
use crate::github::{CommentId, InstallationId, PrNumber, Reaction};
use crate::store::{Job, StoreError};
use crate::types::{ItemKey, RepoName};

use super::{CancelOutcome, JobAction, PrTurn, Runner, Slots, Started, short};
use crate::server::commands::{Command, JobRef, parse_comment};
use crate::server::dispatch::CommentWork;
use crate::server::replies::{self, CancelReply, JobLink, Refusal, StatusRow, WorkflowStart};
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
                        let allowed = if command.needs_maintain_permission() {
                            p.can_maintain()
                        } else {
                            p.can_write()
                        };
                        if !allowed {
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
                    match self.execute(command, &w, slots).await {
                        Ok(text) => text,
                        Err(e) => replies::command_failed(command.name(), &format!("{e:#}")),
                    }
                }
            };
            self.comment(installation, &w.repo, w.number, &reply).await;
            replied += 1;
        }
        Ok(format!("{replied} commands answered"))
    }

    pub(super) async fn execute(
        &self,
        command: &Command,
        w: &CommentWork,
        slots: &mut Slots,
    ) -> anyhow::Result<String> {
        let installation = InstallationId(w.installation);
        match command {
            Command::Help => Ok(replies::help(self.p().app_slug.as_deref())),
            Command::Status => self.status(&w.repo, w.number).await,
            Command::Run { workflow } => {
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
                let selected = config.select(workflow.as_deref());
                if selected.is_empty() {
                    return Ok(replies::unknown_workflow(
                        workflow.as_deref().unwrap_or(""),
                        &config.workflows,
                    ));
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
                    return Ok(replies::jobs_started(&sha, &refused));
                }
                // An explicit command supersedes older jobs as a push does.
                let turn = PrTurn::join(self.pr_lock(&w.repo, w.number)).await;
                let _turn = turn.wait(slots).await;
                let reason = format!("superseded by `/prodigy run` on {}", short(&sha));
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
                Ok(replies::jobs_started(&sha, &starts))
            }
            Command::Resume { job, .. } | Command::Retry { job, .. } | Command::Cancel { job } => {
                let job = match self.resolve(&w.repo, w.number, job.as_ref()).await? {
                    Ok(job) => job,
                    Err(reply) => return Ok(reply),
                };
                let link = self.link(job.id);
                if let Command::Cancel { .. } = command {
                    let outcome = self
                        .cancel_job(&job, &format!("cancelled by @{}", w.author), false)
                        .await?;
                    return Ok(replies::cancel(
                        &link,
                        match &outcome {
                            CancelOutcome::Cancelled => CancelReply::Cancelled,
                            CancelOutcome::Stopping(h) => {
                                CancelReply::Stopping { holder: h.as_ref() }
                            }
                            CancelOutcome::AlreadyFinished(s) => CancelReply::AlreadyFinished(*s),
                        },
                    ));
                }
                let retry = matches!(command, Command::Retry { .. });
                let action = match command {
                    Command::Retry { item, .. } => {
                        let items: Vec<ItemKey> = item.iter().map(|i| ItemKey(i.clone())).collect();
                        if let Some(key) = items.first() {
                            let dlq = self.p().store.dlq(Some(job.id)).await?;
                            if !dlq.iter().any(|d| &d.key == key) {
                                return Ok(replies::not_in_dlq(&link, &key.0));
                            }
                        }
                        JobAction::Retry(
                            job.id,
                            RetryRequest {
                                items,
                                ..Default::default()
                            },
                        )
                    }
                    Command::Resume { budget, .. } => JobAction::Resume(
                        job.id,
                        ResumeRequest {
                            dlq: DlqMode::default(),
                            max_parallel: None,
                            budget: budget.map(|usd| crate::workflow::Budget {
                                max_cost_usd: Some(usd.get()),
                                ..Default::default()
                            }),
                        },
                    ),
                    _ => unreachable!("cancel returned above"),
                };
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
                    return Ok(replies::resume_held(&link, &holder, since));
                }
                let permit = slots.take().await;
                let started = self.start_job(action, ctx, permit).await;
                Ok(match started {
                    Ok(Started::Running(_)) => replies::resuming(&link, retry),
                    Ok(Started::Ended(Ok(Resumed::Held { holder, since }))) => {
                        replies::resume_held(&link, &holder, since)
                    }
                    Ok(Started::Ended(Ok(Resumed::AlreadyFinished { status, dlq }))) => {
                        replies::already_finished(&link, status, dlq)
                    }
                    Ok(Started::Ended(Ok(Resumed::Ran(o)))) => ended_reply(&link, &o),
                    Ok(Started::Ended(Err(e))) => {
                        replies::command_failed(command.name(), &format!("{e:#}"))
                    }
                    Ok(Started::Rerun(_)) | Err(_) => {
                        replies::command_failed(command.name(), "the job task stopped")
                    }
                })
            }
        }
    }

    /// The job a command names (`job=` prefix, of this repository), or the pull request's
    /// latest. `Ok(Err(reply))` when there is none.
    pub(super) async fn resolve(
        &self,
        repo: &RepoName,
        pr: u64,
        wanted: Option<&JobRef>,
    ) -> anyhow::Result<Result<Job, String>> {
        let Some(wanted) = wanted else {
            let latest = self.jobs_of_pr(repo, pr).await?.into_iter().next();
            return Ok(latest.ok_or_else(|| replies::no_such_job(None)));
        };
        match self.p().store.find_job(wanted.as_str()).await {
            // A job of another repository is not this comment's to control.
            Ok(job) if job.repo.as_ref() == Some(repo) => Ok(Ok(job)),
            Ok(_) | Err(StoreError::JobNotFound(_)) | Err(StoreError::AmbiguousJob { .. }) => {
                Ok(Err(replies::no_such_job(Some(wanted.as_str()))))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn status(&self, repo: &RepoName, pr: u64) -> anyhow::Result<String> {
        let jobs = self.jobs_of_pr(repo, pr).await?;
        let mut counts = Vec::with_capacity(jobs.len());
        for job in &jobs {
            counts.push(self.p().store.item_counts(job.id).await?);
        }
        let rows: Vec<StatusRow<'_>> = jobs
            .iter()
            .zip(counts)
            .map(|(job, counts)| StatusRow {
                job: self.link(job.id),
                workflow: &job.workflow_path,
                head_sha: job.head_sha.as_deref(),
                status: job.status,
                phase: job.phase,
                counts,
            })
            .collect();
        Ok(replies::status(&rows))
    }
}

pub(super) fn ended_reply(link: &JobLink, o: &RunOutcome) -> String {
    replies::resume_ended(link, o.status, &o.counts)
}
