"""A real Kubernetes control plane on 127.0.0.1 for tests and people, without a container
engine: etcd, kube-apiserver, kube-scheduler and kube-controller-manager built from the
``k8s.io/kubernetes`` Go modules at one release, plus this project's node agent, which
plays the kubelet of two Nodes (a CPU node and a GPU node) and runs their pods as local
processes. Started and stopped by ``scripts/dev-cluster``; used by the e2e tests."""
