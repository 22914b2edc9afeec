"""Connection strings that may carry credentials, and the one way to show them.

A DSN such as ``http://weir:s3cret@clickhouse:8123/db`` is configuration, but
its password is a secret: ``mask_url`` renders it as
``http://weir:***@clickhouse:8123/db`` (and masks ``password=``-like query
parameters), and ``SecretUrl`` is the settings type that holds such a URL,
shown masked by ``str``, ``repr`` and serialization.  Only the code that opens
the connection calls ``get_secret_value()``.

>>> mask_url("http://weir:s3cret@127.0.0.1:8123/?database=weir&password=s3cret")
'http://weir:***@127.0.0.1:8123/?database=weir&password=***'
>>> SecretUrl("https://user:pw@host:8443")
SecretUrl('https://user:***@host:8443')
"""

from __future__ import annotations

import re

from pydantic import SecretStr

__all__ = ["SecretUrl", "mask_url"]

# The scheme is bounded (RFC 3986 schemes are short) so that scanning a long run of
# letters stays linear; the password runs to the *last* '@' of the authority, so a raw
# '@' inside it is masked too.
_USERINFO = re.compile(
    r"(?P<scheme>(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]{0,31}://)"
    r"(?P<user>[^\s/:@?#]*):(?P<password>[^\s/?#]*)@"
)
_SECRET_PARAM = re.compile(
    r"(?i)(?P<key>[?&;](?:password|passwd|pwd|secret|token|access_token|api_key|apikey)=)"
    r"(?P<value>[^&#\s]+)"
)


def mask_url(text: str) -> str:
    """``text`` with the password of every URL in it (and secret query parameters) as ``***``.

    Works on a bare URL and on any text that contains URLs (an error message
    that quotes one).  The user name is kept: it says which account, and is
    no secret by itself.
    """
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(
        lambda m: f"{m['scheme']}{m['user']}:***@" if m["password"] else m[0], text
    )
    return _SECRET_PARAM.sub(lambda m: f"{m['key']}***", text)


class SecretUrl(SecretStr):
    """A URL that may carry credentials: shown with them masked, ``get_secret_value()`` in full.

    Unlike ``SecretStr``, which shows ``'**********'``, the rest of the URL
    stays readable, so logs and errors can still say which server they mean.
    """

    def _display(self) -> str:
        return mask_url(self.get_secret_value())

    def startswith(self, prefix: str | tuple[str, ...]) -> bool:
        """Whether the URL starts with ``prefix`` (schemes are never secret)."""
        return self.get_secret_value().startswith(prefix)
