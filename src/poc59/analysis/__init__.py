"""Numbers and pictures from confusion matrices: the registered metrics, bootstrap intervals, colours and
plots. Reads no run folders and trains nothing."""
