# Sluice: one image for every process of the stack (scheduler, worker, web, standalone,
# fixtures). Build: docker build -t sluice .   Run: docker run -p 8080:8080 sluice
#
# Stage 1 builds the release binary; rdkafka's bundled librdkafka needs only a C/C++
# toolchain, which the rust image has. The cache mounts keep crates and the target
# directory between builds (BuildKit).
# The toolchain CI builds and tests with (rust-version in Cargo.toml is the minimum).
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY core core
COPY store store
COPY tasks tasks
COPY scheduler scheduler
COPY fixtures fixtures
COPY web web
COPY migrations migrations
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sluice \
    && cp target/release/sluice /usr/local/bin/sluice

# Stage 2: a slim runtime with the binary, the shipped DAGs and a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/sluice --create-home sluice
COPY --from=builder /usr/local/bin/sluice /usr/local/bin/sluice
COPY dags /opt/sluice/dags
# Listen on all interfaces inside the container; publish ports deliberately.
ENV SLUICE_HOME=/var/lib/sluice \
    SLUICE_DAGS_FOLDER=/opt/sluice/dags \
    SLUICE_WEB_HOST=0.0.0.0 \
    SLUICE_METRICS_HOST=0.0.0.0
USER sluice
WORKDIR /var/lib/sluice
# 8080: REST API and /metrics (web, standalone); 9464: /metrics (scheduler, worker).
EXPOSE 8080 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=5 \
    CMD curl -fsS http://127.0.0.1:8080/api/v2/monitor/health || exit 1
ENTRYPOINT ["sluice"]
CMD ["standalone"]
