#!/usr/bin/env bash
# Build the two container images and push them to ECR, tagged with the
# environment (what samconfig.toml's FanoutImage / SseImage name) and the git
# commit (to roll back to).
#
#   infra/build-images.sh dev        # or prod; AWS credentials of the account
#
# Needs docker and the AWS CLI. Creates the ECR repositories rtstream-fanout
# and rtstream-sse when missing. Region: AWS_REGION, else the environment's
# `region` in samconfig.toml, else us-east-1. Set RTSTREAM_REDEPLOY=1 to make
# a running stack's ECS services start tasks from the new images (a tag that
# did not change does not change the task definition, so CloudFormation alone
# would not replace the tasks).
set -euo pipefail
cd "$(dirname "$0")/.."

env_name="${1:?usage: infra/build-images.sh <samconfig environment, e.g. dev>}"
region="${AWS_REGION:-$(python3 -c "import sys,tomllib; c=tomllib.load(open('samconfig.toml','rb')); print(c.get(sys.argv[1],{}).get('deploy',{}).get('parameters',{}).get('region',''))" "$env_name")}"
region="${region:-us-east-1}"
account="$(aws sts get-caller-identity --query Account --output text)"
registry="$account.dkr.ecr.$region.amazonaws.com"
commit="$(git rev-parse --short HEAD 2>/dev/null || date +%Y%m%d%H%M%S)"

aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$registry"

for name in fanout sse; do
  repo="rtstream-$name"
  aws ecr describe-repositories --region "$region" --repository-names "$repo" >/dev/null 2>&1 \
    || aws ecr create-repository --region "$region" --repository-name "$repo" \
         --image-scanning-configuration scanOnPush=true >/dev/null
  # the task definitions declare X86_64: build for it whatever this machine is
  docker build --platform linux/amd64 -f "infra/docker/$name.Dockerfile" \
    -t "$registry/$repo:$env_name" -t "$registry/$repo:$commit" .
  docker push "$registry/$repo:$env_name"
  docker push "$registry/$repo:$commit"
  echo "pushed $registry/$repo:$env_name (= :$commit)"
done

if [ "${RTSTREAM_REDEPLOY:-0}" = "1" ]; then
  stack="$(python3 -c "import sys,tomllib; c=tomllib.load(open('samconfig.toml','rb')); print(c[sys.argv[1]]['global']['parameters']['stack_name'])" "$env_name")"
  for nested in FanoutService SseService; do
    nested_id="$(aws cloudformation describe-stack-resource --region "$region" --stack-name "$stack" \
      --logical-resource-id "$nested" --query StackResourceDetail.PhysicalResourceId --output text 2>/dev/null || true)"
    [ -n "$nested_id" ] || continue
    outputs="$(aws cloudformation describe-stacks --region "$region" --stack-name "$nested_id" \
      --query "Stacks[0].Outputs[?OutputKey=='ClusterName' || OutputKey=='ServiceName'].[OutputKey,OutputValue]" --output text)"
    cluster="$(awk '$1=="ClusterName"{print $2}' <<<"$outputs")"
    service="$(awk '$1=="ServiceName"{print $2}' <<<"$outputs")"
    aws ecs update-service --region "$region" --cluster "$cluster" --service "$service" --force-new-deployment >/dev/null
    echo "redeploying $service"
  done
fi
