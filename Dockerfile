# One image for every riskstream process; docker-compose.yml picks the command.
# CPU build by default; the worker service reserves an NVIDIA GPU and torch uses it when present
# (the PyPI torch wheel ships CUDA libraries).
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false RISKSTREAM_DATA_DIR=/var/lib/riskstream
RUN useradd --system --create-home --home-dir /var/lib/riskstream riskstream
WORKDIR /opt/riskstream
COPY pyproject.toml constraints.txt README.md ./
COPY riskstream ./riskstream
COPY schemas ./schemas
COPY launcher ./launcher
COPY ingest ./ingest
COPY inference ./inference
COPY finetune ./finetune
COPY dashboard ./dashboard
COPY alerts ./alerts
RUN pip install --no-cache-dir -c constraints.txt .
USER riskstream
ENTRYPOINT ["riskstream"]
