# meterwax: `docker build -t meterwax:0.1.0 .` then run `meterwax stream` (see k8s/).
# Bytewax 0.21 publishes wheels for Python 3.8-3.12 only, hence 3.11.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY meterwax meterwax
COPY flows flows
COPY operators operators
COPY sinks sinks
COPY schemas schemas
COPY catalog catalog
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 meterwax
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER meterwax
WORKDIR /home/meterwax
ENTRYPOINT ["meterwax"]
CMD ["stream"]
