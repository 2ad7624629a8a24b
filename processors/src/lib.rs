//! Weir processors: the nodes between a source and a sink (validate, clean).
