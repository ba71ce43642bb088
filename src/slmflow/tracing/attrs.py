"""Attribute names: the OpenTelemetry GenAI semantic conventions, and slmflow's own namespace."""

OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
AGENT_NAME = "gen_ai.agent.name"
TOOL_NAME = "gen_ai.tool.name"
TOOL_CALL_ID = "gen_ai.tool.call.id"
WORKFLOW_NAME = "gen_ai.workflow.name"
CONVERSATION_ID = "gen_ai.conversation.id"
ERROR_TYPE = "error.type"
EVALUATION_EVENT = "gen_ai.evaluation.result"

# slmflow's own
CONFIDENCE = "slmflow.confidence"
COST_USD = "slmflow.cost.usd"
ADAPTER = "slmflow.adapter"
ESCALATED = "slmflow.escalated"
HANDOFF_SOURCE = "slmflow.handoff.source"
HANDOFF_TARGET = "slmflow.handoff.target"
HANDOFF_STATUS = "slmflow.handoff.status"  # validated | repaired | escalated | failed
STEP_NAME = "slmflow.step.name"
REPAIRED = "slmflow.repaired"
ESCALATION_EVENT = "slmflow.escalation"

# added with the tracing back end (issue 5)
OUTPUT_TYPE = "gen_ai.output.type"
INPUT_MESSAGES = "gen_ai.input.messages"      # opt-in content capture
OUTPUT_MESSAGES = "gen_ai.output.messages"    # opt-in content capture
TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"  # opt-in content capture
TOOL_CALL_RESULT = "gen_ai.tool.call.result"        # opt-in content capture
EVALUATION_NAME = "gen_ai.evaluation.name"
EVALUATION_SCORE_VALUE = "gen_ai.evaluation.score.value"
EVALUATION_SCORE_LABEL = "gen_ai.evaluation.score.label"
EVALUATION_EXPLANATION = "gen_ai.evaluation.explanation"
MODEL_IDENTITY = "slmflow.model.identity"  # name+adapter, as ModelInfo.identity
ESCALATION_REASON = "slmflow.escalation.reason"
ESCALATION_TARGET = "slmflow.escalation.target"
INPUT = "slmflow.input"    # opt-in content capture (decorated functions)
OUTPUT = "slmflow.output"  # opt-in content capture (decorated functions)

# added with the trace viewer (issue 20): links and the handoff's contract failure
CALL_ID = "slmflow.call.id"          # an invoke_agent span's call-log record
RUN_ID = "slmflow.run.id"            # an invoke_workflow span's run (the call log's run_id)
WORKFLOW_STATUS = "slmflow.workflow.status"  # ok | escalated | rejected | failed
WORKFLOW_DETAIL = "slmflow.workflow.detail"  # why rejected / failed
HANDOFF_ERRORS = "slmflow.handoff.errors"    # the validation errors that started a repair
HANDOFF_PAYLOAD = "slmflow.handoff.payload"  # opt-in content capture
