"""ChurnNet and the mlops flavor that publishes it (`model=churn_net`)."""
