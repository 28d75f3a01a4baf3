//! Pull requests opened, pushed to or closed: supersede older jobs, start the configured
//! workflows (unless the daily cost cap is reached), cancel a closed one's jobs.

use std::path::PathBuf;

use crate::engine::{NewRun, Resumed};
use crate::github::{InstallationId, PrNumber};
use crate::store::Job;
use crate::types::{JobStatus, RepoName};

use super::{JobAction, Runner, Slots, Started, short};
use crate::server::dispatch::PullRequestWork;
use crate::server::replies::{self, CancelReason, Refusal, Reply, WorkflowStart};
use crate::server::repo_config::{CONFIG_PATH, RepoConfig};
use crate::server::reporting::JobContext;

impl Runner {
    pub(super) async fn on_pull_request(
        &self,
        w: PullRequestWork,
        slots: &mut Slots,
    ) -> anyhow::Result<String> {
        let installation = InstallationId(w.installation);
        if w.is_fork {
            if w.action != "synchronize" {
                self.comment(
                    installation,
                    &w.repo,
                    w.number,
                    &replies::fork_not_run_automatically(),
                )
                .await;
            }
            return Ok("fork pull request: not run automatically".into());
        }
        // A new push makes the older jobs of this pull request pointless.
        let reason = replies::cancel_reason(&CancelReason::Pushed {
            head_sha: w.head_sha.clone(),
        });
        for job in self.jobs_of_pr(&w.repo, w.number).await? {
            if job.head_sha.as_deref() != Some(&w.head_sha) && !job.status.is_finished() {
                self.cancel_job(&job, &reason, true).await?;
            }
        }
        let config = match self
            .load_config(installation, &w.repo, w.number, &w.head_sha)
            .await?
        {
            Ok(config) => config,
            Err(reply) => {
                // No configuration is how a repository says "not using prodigy": stay quiet.
                tracing::info!(repo = %w.repo, pr = w.number, "{}", replies::render(&reply));
                return Ok(format!("not run: no usable {CONFIG_PATH}"));
            }
        };
        if !config.auto_run {
            return Ok("auto_run is false: waiting for `/prodigy run`".into());
        }
        // A workflow that already runs or ran well at this commit (a reopened pull request,
        // the same push announced twice) is not started again.
        let existing = self.jobs_of_pr(&w.repo, w.number).await?;
        let workflows: Vec<String> = config
            .workflows
            .iter()
            .filter(|wf| {
                !existing.iter().any(|j| {
                    j.head_sha.as_deref() == Some(w.head_sha.as_str())
                        && &j.workflow_path == *wf
                        && matches!(
                            j.status,
                            JobStatus::Pending | JobStatus::Running | JobStatus::Succeeded
                        )
                })
            })
            .cloned()
            .collect();
        if workflows.is_empty() {
            return Ok(format!(
                "every workflow already ran at {}",
                short(&w.head_sha)
            ));
        }
        let starts = self
            .start_workflows(
                installation,
                &w.repo,
                w.number,
                &w.head_sha,
                &config,
                &workflows,
                slots,
            )
            .await;
        self.comment(
            installation,
            &w.repo,
            w.number,
            &replies::jobs_started(&w.head_sha, &starts),
        )
        .await;
        Ok(format!("{} workflows started", starts.len()))
    }

    pub(super) async fn on_closed(&self, repo: &RepoName, number: u64) -> anyhow::Result<String> {
        let mut n = 0;
        for job in self.jobs_of_pr(repo, number).await? {
            if job.status.is_finished() {
                continue;
            }
            let reason = replies::cancel_reason(&CancelReason::PullRequestClosed);
            self.cancel_job(&job, &reason, true).await?;
            n += 1;
        }
        Ok(format!("closed: {n} jobs cancelled"))
    }

    pub(super) async fn jobs_of_pr(
        &self,
        repo: &RepoName,
        number: u64,
    ) -> anyhow::Result<Vec<Job>> {
        Ok(self
            .p()
            .store
            .find_jobs_by_pr(repo, crate::types::PrNumber(number))
            .await?)
    }

    /// The repository's configuration at `sha` (fetching it first). `Ok(Err(reply))`: there is
    /// none usable, with the reply that says so.
    pub(super) async fn load_config(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        pr: u64,
        sha: &str,
    ) -> anyhow::Result<Result<RepoConfig, Reply>> {
        let token = self.token_for_git(installation, repo).await?;
        self.p()
            .repos
            .prepare(repo, Some(PrNumber(pr)), sha, token)
            .await?;
        let Some(text) = self.p().repos.read_file(repo, sha, CONFIG_PATH).await? else {
            return Ok(Err(Reply::NoConfig {
                head_sha: sha.to_string(),
                config_path: CONFIG_PATH,
            }));
        };
        let offered = &self.p().engine.agents.env.pass;
        Ok(RepoConfig::parse(&text)
            .and_then(|c| c.check_pass_env(offered).map(|()| c))
            .map_err(|e| Reply::BadConfig {
                head_sha: sha.to_string(),
                error: e.to_string(),
            }))
    }

    /// Why new jobs of `repo` may not start today (the operator's daily cost cap), if so.
    pub(super) async fn repo_over_daily_cap(&self, repo: &RepoName) -> Option<String> {
        let cap = self.p().engine.agent.repo_daily_cost_usd?;
        let since = crate::engine::agent::utc_midnight(chrono::Utc::now());
        match self.p().store.repo_cost_since(repo, since).await {
            Ok(spent) => crate::engine::agent::repo_daily_spent(repo.as_str(), spent, cap),
            Err(e) => Some(format!(
                "cannot read what {repo} spent today, which the daily cost cap needs: {e}"
            )),
        }
    }

    /// Starts each workflow as a job at `sha` and waits until each has started (or ended).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn start_workflows(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        pr: u64,
        sha: &str,
        config: &RepoConfig,
        workflows: &[String],
        slots: &mut Slots,
    ) -> Vec<WorkflowStart> {
        let mut waiting = Vec::new();
        let mut out = Vec::new();
        let over_cap = self.repo_over_daily_cap(repo).await;
        for workflow in workflows {
            if let Some(why) = &over_cap {
                out.push(WorkflowStart::Refused {
                    workflow: workflow.clone(),
                    why: Refusal::OverDailyCap {
                        why: why.clone(),
                        automatic: true,
                    },
                });
                continue;
            }
            let text = match self.p().repos.read_file(repo, sha, workflow).await {
                Ok(Some(text)) => text,
                Ok(None) => {
                    out.push(WorkflowStart::Refused {
                        workflow: workflow.clone(),
                        why: Refusal::MissingWorkflow {
                            head_sha: sha.to_string(),
                        },
                    });
                    continue;
                }
                Err(e) => {
                    out.push(WorkflowStart::Failed {
                        workflow: workflow.clone(),
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            let run = NewRun {
                repo: self.p().repos.path(repo),
                workflow_path: PathBuf::from(workflow),
                max_parallel: config.max_parallel,
                repo_name: Some(repo.clone()),
                pr_number: Some(PrNumber(pr)),
                head_sha: Some(crate::types::CommitSha(sha.to_string())),
                base_commit: Some(sha.to_string()),
                workflow_text: Some(text),
            };
            let ctx = JobContext {
                repo: repo.clone(),
                pr_number: Some(pr),
                head_sha: Some(crate::types::CommitSha(sha.to_string())),
                installation,
                workflow: workflow.clone(),
                links: self.p().links.clone(),
                pass_env: config.pass_env.clone(),
            };
            let permit = slots.take().await;
            let rx = self.start_job(JobAction::Run(Box::new(run)), ctx, permit);
            waiting.push((workflow.clone(), rx));
        }
        for (workflow, rx) in waiting {
            out.push(match rx.await {
                Ok(Started::Running(id)) => WorkflowStart::Started {
                    workflow,
                    job: self.link(id),
                },
                Ok(Started::Ended(Ok(Resumed::Ran(o)))) => WorkflowStart::Ended {
                    workflow,
                    job: Some(self.link(o.job)),
                    status: o.status.to_string(),
                },
                Ok(Started::Ended(Ok(_))) => WorkflowStart::Ended {
                    workflow,
                    job: None,
                    status: "did not run".into(),
                },
                Ok(Started::Ended(Err(e))) => WorkflowStart::Failed {
                    workflow,
                    error: format!("{e:#}"),
                },
                Ok(Started::Rerun(_)) => WorkflowStart::Failed {
                    workflow,
                    error: "the job task answered as a re-run".into(),
                },
                Err(_) => WorkflowStart::Failed {
                    workflow,
                    error: "the job task stopped unexpectedly".into(),
                },
            });
        }
        out
    }
}
