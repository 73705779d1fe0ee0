# syntax=docker/dockerfile:1
#
# ingress-egress container image: a release build in the official Rust image, run as a
# non-root user on Debian slim. Built by cloudbuild.yaml; see docs/deploy.md.
#
#   docker build -t ingress-egress .
#   docker run --rm -p 8080:8080 -e APP_ENV=development ingress-egress   # embedded bus, dev token
#
# The image defaults to APP_ENV=production, which refuses to start without AMQP_URL,
# PUBLIC_BASE_URL, TWILIO_AUTH_TOKEN and TWILIO_ACCOUNT_SID: a forgotten variable fails loudly
# instead of running a deployment with development shortcuts.
#
# The runtime honours PORT (Cloud Run sets it; default 8080) and keeps its outbox in
# /var/lib/ingress-egress/outbox. HEALTHCHECK asks GET /healthz with bash's /dev/tcp, so the
# image needs no curl or wget (one less package to patch).

ARG RUST_VERSION=1

# ---- dependencies -------------------------------------------------------------------------
# Every crate the service depends on, compiled against placeholder sources: this stage changes
# only when Cargo.toml or Cargo.lock do. cloudbuild.yaml builds and pushes it on its own
# (`--target=deps`, tag `deps`) and passes it to the next build as `--cache-from`, so a source
# change recompiles the service alone. The image builds only the library and the binary, so the
# manifest's [[test]], [[bench]] and [[example]] targets are dropped (their files are not in the
# build context; the lock file does not depend on them).
FROM rust:${RUST_VERSION}-bookworm AS deps
WORKDIR /build
COPY Cargo.toml Cargo.lock ./
RUN awk '/^\[\[(test|bench|example)\]\]/ { skip = 1; next } /^\[/ { skip = 0 } !skip' \
        Cargo.toml > Cargo.image.toml \
    && mv Cargo.image.toml Cargo.toml \
    && mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin ingress-egress \
    && rm -rf src \
        target/release/ingress-egress* \
        target/release/deps/ingress_egress-* \
        target/release/deps/libingress_egress-* \
        target/release/.fingerprint/ingress-egress-*

# ---- build --------------------------------------------------------------------------------
# The service itself. Touch the sources so cargo never mistakes them for the placeholders.
FROM deps AS builder
# openapi/ holds the AsyncAPI document and its schemas, compiled in (src/routes/event_contract.rs).
COPY openapi/asyncapi.yaml openapi/*.schema.json ./openapi/
COPY src ./src
RUN find src -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --bin ingress-egress \
    && strip target/release/ingress-egress \
    && cp target/release/ingress-egress /usr/local/bin/ingress-egress

# ---- run ----------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# CA certificates for TLS to Twilio and amqps:// brokers; nothing else.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

ARG APP_UID=10001
RUN groupadd --system --gid ${APP_UID} app \
    && useradd --system --uid ${APP_UID} --gid app --home-dir /var/lib/ingress-egress \
        --shell /usr/sbin/nologin app \
    && mkdir -p /var/lib/ingress-egress/outbox \
    && chown -R app:app /var/lib/ingress-egress

COPY --from=builder /usr/local/bin/ingress-egress /usr/local/bin/ingress-egress

ENV PORT=8080 \
    APP_ENV=production \
    LOG_FORMAT=json \
    OUTBOX_DIR=/var/lib/ingress-egress/outbox
WORKDIR /var/lib/ingress-egress
USER app:app
EXPOSE 8080

# Liveness only (not /readyz): a broker outage must not mark the container unhealthy, the
# outbox covers it. Cloud Run ignores HEALTHCHECK and uses its own probes (architecture.yaml).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PORT:-8080} && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["/usr/local/bin/ingress-egress"]
CMD ["serve"]
