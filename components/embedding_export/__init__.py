"""EmbeddingExport: custom Beam-powered TFX component (spec / executor / component).

The blessed encoder's embedding of every kept user (BehaviorPreprocess's records,
all splits) and the user-id -> embedding lookup SavedModel built from them, in a
``Model`` artifact that a second Pusher (``LookupPusher``) pushes beside the encoder.
"""
