"""Every topic weir uses: names, configuration, creation, and the local broker.

>>> from topics import PipelineTopics
>>> PipelineTopics("support").requests
'weir.support.requests'
"""

from topics.admin import TopicAdmin
from topics.names import INGRESS, TRACES_TOPIC, PipelineTopics, TopicSpec, topic_specs

__all__ = ["INGRESS", "TRACES_TOPIC", "PipelineTopics", "TopicAdmin", "TopicSpec", "topic_specs"]
