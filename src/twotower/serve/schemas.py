"""Request bodies of the service (pydantic models: FastAPI validates them and publishes them at /docs).

Ids are JSON integers or strings as the training data had them; every model forbids unknown fields,
so a misspelt field is named in a 422 rather than silently ignored. Limits that depend on the
server's settings (`k`, list lengths) are checked by the endpoints, naming the field the same way.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

ItemId = StrictInt | StrictStr
Number = StrictInt | StrictFloat


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendBody(_Body):
    """`POST /recommend`: top-k for users seen in training."""

    users: list[ItemId] = Field(description="external user ids")
    k: StrictInt = Field(10, description="results per user")
    exclude_seen: StrictBool = Field(True, description="leave out each user's train, valid and test items")


class FeaturesBody(_Body):
    """`POST /recommend/features`: cold-start users from side features and/or recent items."""

    features: list[dict[str, Any]] | None = Field(
        None, description="one mapping per user, feature name -> value in the training table's coding")
    history: list[list[ItemId]] | None = Field(None, description="per user, the external ids of items they used")
    k: StrictInt = 10
    exclude_history: StrictBool = True


class SimilarBody(_Body):
    """`POST /similar`: the items nearest each given item (itself left out)."""

    items: list[ItemId]
    k: StrictInt = 10


class NewItem(_Body):
    """One item of `PUT /items`: exactly one of `vector` (the item tower's output, D values) or
    `features` (through the item tower)."""

    id: ItemId
    vector: list[Number] | None = None
    features: dict[str, Any] | None = None


class PutItemsBody(_Body):
    """`PUT /items`: add items, or replace the vectors of items already in the catalogue."""

    items: list[NewItem]


class DeleteItemsBody(_Body):
    """`DELETE /items`: delete items by external id (all or none)."""

    items: list[ItemId]


class ReloadBody(_Body):
    """`POST /admin/reload`: load a model directory and swap it in."""

    model_dir: StrictStr | None = Field(None, description="default: the directory being served")
    wait: StrictBool = Field(False, description="answer once the new version serves (else 202 at once)")
