"""DataSchedule (level 1) and Monitoring (level 4): EventBridge schedules, the drift notification.

Every name comes from the Plan (through the spec's :class:`Schedule`) or from mlops._names: a schedule
asks for a run of one Plan deployment (`mlops.run.requested`, detail `{"model", "deployment":
"<flow>/<deployment>"}`), and a flow publishes a Prefect event to the bus as it emits it locally:
source `mlops`, detail-type the event's name (`mlops.drift.detected`), resources its
`prefect.resource.id` (`mlops.model.<recipe>`), detail its payload.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from mlops._names import EVENT_SOURCE, RUN_REQUESTED, model_resource
from mlops.infra.aws._common import Account, allow, child, role
from mlops.infra.aws._store import ArtifactStore
from mlops.infra._spec import Schedule
from mlops.recipe.schema import MonitoringParams


def _schedule(parent: pulumi.Resource, name: str, schedule: Schedule, model: str,
              account: Account) -> aws.scheduler.Schedule:
    """A schedule that puts one `mlops.run.requested` event for the Plan deployment on the default bus;
    Prefect (or a rule) acts on it: `prefect deployment run <detail.deployment>`."""
    bus = account.arn("events", "event-bus/default")
    sched_role = role(parent, f"{name}-role", "scheduler.amazonaws.com", [allow(["events:PutEvents"], [bus])])
    return aws.scheduler.Schedule(name, schedule_expression=schedule.expression, flexible_time_window={"mode": "OFF"},
                                  target={"arn": bus, "role_arn": sched_role.arn,
                                          "eventbridge_parameters": {"detail_type": RUN_REQUESTED,
                                                                     "source": EVENT_SOURCE},
                                          "input": json.dumps({"model": model, "deployment": schedule.ref}),
                                          "retry_policy": {"maximum_retry_attempts": 3}},
                                  opts=child(parent))


class DataSchedule(pulumi.ComponentResource):
    """Level 1: when fresh data is ingested and validated: a run of the Plan's data deployment on a schedule."""

    def __init__(self, name: str, schedule: Schedule, model: str, account: Account,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:aws:DataSchedule", name, None, opts)
        s = _schedule(self, name, schedule, model, account)
        self.register_outputs({"schedule": s.arn})


class Monitoring(pulumi.ComponentResource):
    """Level 4: the profile store prefix, the monitor deployment's schedule, and a notification on what it emits.

    The monitor deployment publishes its events (the Plan's `emits`: drift detected, traffic quarantined;
    source `mlops`) to the default bus with the `publisher_policy`; a rule forwards those of this recipe's
    model to an encrypted SNS topic (and `alarm_email`, if set).
    """

    def __init__(self, name: str, params: MonitoringParams, schedule: Schedule, store: ArtifactStore, model: str,
                 account: Account, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mlops:aws:Monitoring", name, None, opts)
        self.profiles_uri = store.uri(params.profile_prefix)
        bus = account.arn("events", "event-bus/default")
        s = _schedule(self, f"{name}-drift-check", schedule, model, account)
        topic = aws.sns.Topic(f"{name}-drift", kms_master_key_id="alias/aws/sns", opts=child(self))
        rule = aws.cloudwatch.EventRule(f"{name}-drift", event_pattern=json.dumps({
            "source": [EVENT_SOURCE], "detail-type": list(schedule.emits), "resources": [model_resource(model)]}),
            opts=child(self))
        aws.sns.TopicPolicy(f"{name}-drift", arn=topic.arn, policy=pulumi.Output.json_dumps({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"}, "Action": "sns:Publish",
                "Resource": topic.arn, "Condition": {"ArnEquals": {"aws:SourceArn": rule.arn}}}]}), opts=child(self))
        aws.cloudwatch.EventTarget(f"{name}-drift", rule=rule.name, arn=topic.arn, opts=child(self))
        if params.alarm_email:
            aws.sns.TopicSubscription(f"{name}-drift-email", topic=topic.arn, protocol="email",
                                      endpoint=params.alarm_email, opts=child(self))
        self.publisher_policy = aws.iam.Policy(f"{name}-drift-publisher", policy=pulumi.Output.json_dumps({
            "Version": "2012-10-17", "Statement": [allow(["events:PutEvents"], [bus],
                                                         StringEquals={"events:source": EVENT_SOURCE})]}), opts=child(self))
        self.topic_arn = topic.arn
        self.register_outputs({"profiles": self.profiles_uri, "drift_topic": topic.arn, "drift_schedule": s.arn})
