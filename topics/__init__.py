"""Every topic weir uses: names, configuration, creation, and the local broker.

>>> from weir.topics import PipelineTopics
>>> PipelineTopics("support").requests
'weir.support.requests'
"""

from weir.topics.admin import TopicAdmin
from weir.topics.names import INGRESS, TRACES_TOPIC, PipelineTopics, TopicSpec, topic_specs

__all__ = ["INGRESS", "TRACES_TOPIC", "PipelineTopics", "TopicAdmin", "TopicSpec", "topic_specs"]
