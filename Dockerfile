# Build stage: compile the release binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src ./src
COPY migrations ./migrations
# The manifest names the benchmark target, so its source must be present to build.
COPY benches ./benches
RUN cargo build --release --locked --bin scim-bridge

# Runtime stage: a small image with CA certificates and an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin scim-bridge \
 && mkdir -p /data && chown scim-bridge /data
COPY --from=build /src/target/release/scim-bridge /usr/local/bin/scim-bridge
USER scim-bridge
ENV SCIM_BRIDGE_DATA_DIR=/data \
    SCIM_BRIDGE_LISTEN=0.0.0.0:8080
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["scim-bridge"]
CMD ["serve"]
