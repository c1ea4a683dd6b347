"""Generated from protos/agentflow/v1/service.proto by scripts/gen_protos.sh. Do not edit."""
