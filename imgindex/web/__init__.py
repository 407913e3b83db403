"""The web page and JSON API of a library (``imgindex serve``, ``imgindex daemon --http``)."""
