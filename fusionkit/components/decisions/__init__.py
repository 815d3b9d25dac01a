"""Decision heads: how the branch posteriors P_I, P_IM, P_M form the final posterior."""
