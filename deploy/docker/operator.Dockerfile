# fulva-operator: multi-stage build, small non-root runtime image.
#   docker build -f deploy/docker/operator.Dockerfile -t ghcr.io/fulva/operator:0.1.0 .
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p fulva-operator --bin fulva-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/fulva-operator /usr/local/bin/fulva-operator
USER 65532:65532
EXPOSE 7000 8080
ENTRYPOINT ["/usr/local/bin/fulva-operator"]
