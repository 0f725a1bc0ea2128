package netstack

// startEgress installs the TCP and UDP forwarders. (Being written.)
func (p *Port) startEgress() {}
