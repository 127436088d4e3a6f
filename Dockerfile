# Server Monitor hub. The agent runs on the GPU hosts themselves (see docs/agent.md).
#   docker build -t server-monitor . && docker run -p 127.0.0.1:5100:5100 -v sm-data:/data server-monitor
# The hub listens on every interface inside the container; publish it on the host's loopback and
# put the reverse proxy of docs/operations.md (scripts/nginx-server-monitor.conf) in front.
# The image holds no secrets: on first start the hub writes /data/config.yaml with random
# ones and prints the admin password once (docker logs). Mount your own config.yaml at
# /data/config.yaml, or pass SERVER_MONITOR_SECRET_KEY, SERVER_MONITOR_AGENT_TOKEN and
# SERVER_MONITOR_ADMIN_PASSWORD_HASH as environment variables.

FROM python:3.11-slim AS agent-build
WORKDIR /src
COPY requirements-agent.txt requirements-build.txt ./
COPY agent.py ./
COPY monitor_agent ./monitor_agent
COPY scripts/build_agent.sh ./scripts/
RUN scripts/build_agent.sh --out /dist

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SERVER_MONITOR_CONFIG=/data/config.yaml
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin server-monitor \
    && mkdir /data && chown server-monitor:server-monitor /data
WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
COPY --from=agent-build /dist/ ./static/agent/
RUN cp scripts/install_agent.sh static/agent/ && pip install --no-cache-dir --no-deps -e . \
    && rm -rf tests .ci config.yaml *.db
USER server-monitor
VOLUME ["/data"]
EXPOSE 5100
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:5100/-/health', timeout=4).status != 200)"]
CMD ["server-monitor", "serve", "--init", "-c", "/data/config.yaml", "--host", "0.0.0.0", "--port", "5100"]
