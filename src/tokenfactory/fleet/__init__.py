"""Engine replicas on Ray behind one HTTP front: `tokenfactory serve --replicas N`."""
