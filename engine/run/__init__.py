"""One style transfer run: the engine, the problem at one size, the L-BFGS drivers, records."""
