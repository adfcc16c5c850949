"""helpdesk-milter: a Postfix milter that routes support requests to the helpdesk."""

__version__ = "0.1.0"


def build() -> str:
    """How the decision core was installed: "compiled (mypyc)" or "pure Python"
    (setup.py compiles it when a C compiler is present; see README, "Install")."""
    from . import secrets
    return "pure Python" if (secrets.__file__ or "").endswith(".py") else "compiled (mypyc)"
