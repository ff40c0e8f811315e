#!/bin/sh
# Creates the MLflow artifact bucket and a MinIO user for MLflow that can reach only that bucket.
# Run once by the minio-init service of deploy/docker-compose.yaml (same steps as the
# minio-bucket-init Job of deploy/mlflow/minio-bucket-job.yaml). Idempotent.
set -eu
export HOME=/tmp
until mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
  echo "waiting for minio..."
  sleep 2
done
mc mb --ignore-existing local/mlflow-artifacts
mc anonymous set none local/mlflow-artifacts
mc admin policy create local mlflow-artifacts-rw /init/mlflow-artifacts-policy.json
mc admin user add local "$MLFLOW_S3_ACCESS_KEY" "$MLFLOW_S3_SECRET_KEY"
mc admin policy attach local mlflow-artifacts-rw --user "$MLFLOW_S3_ACCESS_KEY" \
  || echo "policy already attached"
echo "bucket mlflow-artifacts and the MLflow user are ready"
