"""localstripe lists a type in O(objects of that type), not O(every object it holds).

localstripe 1.15 lists a type by scanning its whole store, and it lists a customer's
subscriptions each time it renders a customer (the create response and the `customer.created`
event). Creating customers therefore got slower with every object in the sandbox, and a
benchmark that fills it slowed down run after run.
Here the store keeps an index by type beside its dict and the base list reads the index; the
objects, their order and every answer stay localstripe's own. Dev/test Stripe only.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any


def install(resources: ModuleType) -> None:
    """Patch localstripe's `resources` module in the sandbox's backend process."""
    store_type = resources.Store
    base_set, base_del = store_type.__setitem__, store_type.__delitem__

    def by_type(store: Any) -> dict[str, dict[str, Any]]:
        index: dict[str, dict[str, Any]] | None = store.__dict__.get("_by_type")
        if index is None:
            index = {}
            store.__dict__["_by_type"] = index
            for key, value in dict.items(store):
                index.setdefault(key.split(":", 1)[0], {})[key] = value
        return index

    def setitem(self: Any, key: str, value: Any) -> None:
        base_set(self, key, value)
        by_type(self).setdefault(key.split(":", 1)[0], {})[key] = value

    def delitem(self: Any, key: str) -> None:
        base_del(self, key)
        by_type(self).get(key.split(":", 1)[0], {}).pop(key, None)

    def clear(self: Any) -> None:
        dict.clear(self)
        by_type(self).clear()

    def list_all(cls: Any, url: str, limit: Any = None, starting_after: Any = None, **kwargs: Any) -> Any:
        if kwargs:  # as localstripe's own: a filter this type does not know is a 400
            raise resources.UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
        listing = resources.List(url, limit=limit, starting_after=starting_after)
        listing._list = list(by_type(resources.store).get(cls.object, {}).values())  # noqa: SLF001 - patches localstripe's internals
        return listing

    store_type.__setitem__ = setitem
    store_type.__delitem__ = delitem
    store_type.clear = clear
    resources.StripeObject._api_list_all = classmethod(list_all)  # noqa: SLF001 - patches localstripe's internals
    by_type(resources.store)
