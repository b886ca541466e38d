# fulva-kvnode: multi-stage build, small non-root runtime image.
#   docker build -f deploy/docker/kvnode.Dockerfile -t ghcr.io/fulva/kvnode:0.1.0 .
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p fulva-kvnode --bin fulva-kvnode

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/fulva-kvnode /usr/local/bin/fulva-kvnode
USER 65532:65532
EXPOSE 7100/udp 7101 7102 9100
ENTRYPOINT ["/usr/local/bin/fulva-kvnode"]
