package netstack

// startDNS listens on port 53 of the gateway addresses. (Being written.)
func (p *Port) startDNS() error { return nil }
