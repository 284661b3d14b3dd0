# pacs-migrator: `docker build -t pacs-migrator:local .`, then see docker-compose.yml.
FROM python:3.11-slim

# DCMTK (echoscu, dcmdump, storescu) for diagnosing DICOM connections and files.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends dcmtk \
    && rm -rf /var/lib/apt/lists/*

# The legacy database driver is not a project dependency. pymssql matches
# the mssql+pymssql:// URL of deploy/migrator.toml.example.
ARG LEGACY_DRIVER=pymssql

# Only the package sources are copied, so a local .venv or demo run stays out of the image.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY migrator ./migrator
COPY scheduler ./scheduler
COPY workers ./workers
RUN pip install --no-cache-dir . ${LEGACY_DRIVER}

# The storage roots must be readable by this user (uid 10001).
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/migrator migrator
USER migrator
WORKDIR /var/lib/migrator
ENV MIGRATOR_CONFIG=/etc/migrator/migrator.toml

ENTRYPOINT ["migrator"]
CMD ["--help"]
