# prodigy serve, the GitHub App server, as a container (README.md, "Deploying the server").
#   docker build -t prodigy .
#   docker run -p 3000:3000 -v prodigy-state:/var/lib/prodigy \
#     -e PRODIGY_APP_ID -e PRODIGY_PRIVATE_KEY -e PRODIGY_WEBHOOK_SECRET -e PRODIGY_ALLOW_REPOS prodigy
# Agents run inside this container: a workflow's `claude:` steps need the AI CLI, so build your
# own image FROM this one and add the tools your workflows call.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && cp target/release/prodigy /usr/local/bin/prodigy

FROM debian:bookworm-slim
# git: agents and merges use the git CLI; curl: the health check.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl git \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/prodigy --create-home prodigy
COPY --from=build /usr/local/bin/prodigy /usr/local/bin/prodigy
USER 10001:10001
WORKDIR /var/lib/prodigy
# State (SQLite database, repository cache, worktrees, logs) lives in the volume; set
# DATABASE_URL to a PostgreSQL to share work between several servers.
ENV PRODIGY_STATE_DIR=/var/lib/prodigy \
    PRODIGY_LISTEN=0.0.0.0:3000
VOLUME ["/var/lib/prodigy"]
EXPOSE 3000
# /healthz answers while the process is up (/readyz also checks the database).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["curl", "--fail", "--silent", "--show-error", "--max-time", "4", "http://127.0.0.1:3000/healthz"]
ENTRYPOINT ["prodigy", "serve"]
