"""Scale-out on Ray (the optional ``poolserve[ray]`` extra): Ray Data predictors and file
jobs over a Ray cluster, and Ray Serve replicas of the HTTP app. Only this package
imports ray."""
