# One image for every node of the docker-compose cluster: the testnet writer (init),
# validators and trainers. See docker-compose.yml.

# The project's dependencies as a requirements file, so that the layer installing them
# (TensorFlow is most of the image) is rebuilt only when they change, not on every edit
# of pyproject.toml or of the source.
FROM python:3.11-slim AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; deps = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']; open('/requirements.txt', 'w').write('\n'.join(deps) + '\n')"

FROM python:3.11-slim
LABEL org.opencontainers.image.title="flobc"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TF_CPP_MIN_LOG_LEVEL=2

COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

COPY docker/init-testnet.sh /usr/local/bin/flobc-init-testnet

# The project itself, installed (not editable) and its source removed, so that nothing
# imports from a source folder by accident.
COPY . /tmp/flobc
RUN pip install --no-deps /tmp/flobc \
 && rm -rf /tmp/flobc \
 && chmod 0755 /usr/local/bin/flobc-init-testnet \
 && flobc --version

WORKDIR /net
CMD ["flobc", "--help"]
