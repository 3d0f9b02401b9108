"""Components whose constructor arguments can be refused, refused before the component exists.

Amaranth warns about an elaboratable that is created and never elaborated (``UnusedElaboratable``),
and a component whose ``__init__`` raises is exactly that. A class that mixes in ``Checked`` (before
``wiring.Component``) gives a static ``check`` taking the constructor's arguments: it runs first and
raises ``ValueError`` naming what is wrong, so a refused component is never created.
"""
from __future__ import annotations


class Checked:
    def __new__(cls, *args, src_loc_at: int = 0, **kwargs):
        cls.check(*args, **kwargs)
        return super().__new__(cls, *args, src_loc_at=src_loc_at + 1, **kwargs)

    @staticmethod
    def check(*args, **kwargs) -> None:
        """Raise ValueError when the constructor's arguments are refused."""
        raise NotImplementedError
