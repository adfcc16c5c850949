"""helpdesk-milter: a Postfix milter that routes support requests to the helpdesk."""

__version__ = "0.1.0"
