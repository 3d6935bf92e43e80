# mqtt-redis-bridge: build on Debian bookworm, run on a slim image with only
# the runtime libraries. Used by docker-compose.yml.

FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config \
      libpaho-mqtt-dev libhiredis-dev libcjson-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMRB_WERROR=ON -DMRB_TESTS=OFF -DMRB_BENCH=OFF \
 && cmake --build build -j"$(nproc)" \
 && strip --strip-unneeded build/mqtt-redis-bridge

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libpaho-mqtt1.3 libhiredis0.14 libcjson1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin bridge
COPY --from=build /src/build/mqtt-redis-bridge /usr/local/bin/mqtt-redis-bridge
USER bridge
# The bridge exits 0 on SIGTERM (docker stop). Broker and Redis URLs come from
# the compose file's `command:`; see docker-compose.yml.
ENTRYPOINT ["/usr/local/bin/mqtt-redis-bridge"]
