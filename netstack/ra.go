package netstack

// startRouterAdvertisements starts IPv6 router advertisements. (Being written.)
func (p *Port) startRouterAdvertisements() {}
