# The load balancer in front of the `silo serve` replicas of docker/compose.yaml: Debian's
# nginx with docker/nginx.conf. Build from the repository root:
#   docker build -f docker/lb.Dockerfile -t silo-lb .
ARG BASE_IMAGE=silo-base:bookworm
FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends nginx-light \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
COPY docker/nginx.conf /etc/nginx/nginx.conf
EXPOSE 8000
CMD ["nginx", "-g", "daemon off;"]
