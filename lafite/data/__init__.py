"""The data layer: the built-in world, image+caption folders, and dataset resolution.

Submodules are imported directly (``from lafite.data.world import World``) so that importing
``lafite.data`` stays cheap and never pulls in torch for callers that only need the world.
"""
