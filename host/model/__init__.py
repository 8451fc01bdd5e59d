"""Models: specs, weights, user data sets, training and pruning (see the modules)."""
